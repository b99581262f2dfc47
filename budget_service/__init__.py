"""GVM Budget service: per-prompt sample allocation by Gradient Variance Minimization, over HTTP."""

__version__ = "0.1.0"
