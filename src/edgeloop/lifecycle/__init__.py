"""The model lifecycle in one place: retrain bookkeeping, the promotion rule, probation and demotion.

- :mod:`.promotion`: does a trained challenger replace the champion (on the same holdout)?
- :mod:`.probation`: does a newly installed model keep serving once it has been scored live?
- :mod:`.floor`: is a device's model, right now, worse than persistence (demote, restore)?
- :mod:`.retrains`: each scope's pending retrain, its attempts, deadline and retries.

The engine decides from numbers; the lifecycle applies decisions; adapters only move bytes. The edge,
the trainer, the ``edgeloop models`` commands and the evaluator all go through this package.
"""
