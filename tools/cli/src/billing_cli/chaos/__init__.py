"""A seeded chaos campaign against a whole local stack (``billing chaos``).

``runner`` brings up a stack of its own (``Layout.chaos()``), drives a mixed workload
(``workload``) while ``killer`` SIGKILLs and restarts components on a seeded schedule,
records what the clients did and saw (``model``), waits for the pipeline to go quiet and
checks the database, the reconciler and the dead-letter topics against that record
(``checks``). One seed always gives the same workload and kill schedule.
"""
