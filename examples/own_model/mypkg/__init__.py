# mypkg/__init__.py
"""A user's own project: distrib finds these classes by their dotted paths in conf/."""
