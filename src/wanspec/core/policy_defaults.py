"""Default policy thresholds, in a module of their own.

Why: the CLI shows them as option defaults without importing the policy code, so that
``wanspec simulate`` can still load the compiled build of the cores
(:mod:`wanspec.simulate.compiled`), which must happen before their first import.
"""

ENTROPY_THRESHOLD = 1.0  # nats above which the entropy policy predicts a rejection
BUSY_PASS_WEIGHT = 2.5  # adaptive: price of a busy-site draft pass, x its device time
