"""The model lifecycle in one place: retrain bookkeeping, the promotion rule, probation and demotion.

The engine decides from numbers; the lifecycle applies decisions; adapters only move bytes. The edge,
the trainer, the ``edgeloop models`` commands and the evaluator all go through this package.
"""
