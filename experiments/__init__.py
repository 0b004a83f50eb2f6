"""The paper's claims, measured with this package (run from the repository root).

``python -m experiments.fig5``  — Fig. 5: c-sign lowers the weight flip rate (sign vs c-sign,
same initial model, several seeds; digits here, ``--data cifar10|cifar100`` for WRN-22).
``python -m experiments.sweep`` — the hyper-parameter study: m in {1..4}, delta in
{0.05, 0.1, 0.2, 0.5}, several seeds each, on digits.
"""
