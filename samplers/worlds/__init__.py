"""Analytic worlds for tests, demos and benchmarks: exact denoisers, guided test problems, metrics.

Never imported by product code (``nodes/`` or the samplers themselves); a test checks that.
"""
