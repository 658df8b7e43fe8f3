"""Pure-torch samplers of the Nested · Split · Elastic pack (no ComfyUI imports).

Each method is a k-diffusion-contract function ``fn(model, x, sigmas, extra_args=None,
callback=None, disable=None, **options)`` (Elastic uses a small documented denoiser protocol),
so analytic denoisers drive them in tests and power users can call them from Python.
"""
