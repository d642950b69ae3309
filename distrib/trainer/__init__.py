"""The trainer behind ``python -m distrib.train``: the loop (`loop.fit`), exact evaluation,
guards that stop a run gone wrong, metrics reduced in one collective, preemption, the state a
checkpoint holds (`state`) and what may change on a resume (`resume_policy`)."""
