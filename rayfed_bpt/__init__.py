"""rayfed_bpt: scalable personalized federated learning simulation on Ray.

The flagship algorithm is pFedBayesPT (instance-wise personalized FL by
semi-implicit Bayesian visual prompt tuning). Data (``rayfed_bpt.data``),
models and algorithms stay free of Ray; only ``rayfed_bpt.runtime`` talks to it.
"""

__version__ = "0.1.0"
