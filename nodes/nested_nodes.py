"""Nested Diffusion nodes: NestedSampler (SAMPLER), NestedKSampler (one node), NestedOfficialOuterScheduler."""
from __future__ import annotations

import time

from comfy_api.latest import io

from ..samplers import nested
from . import compat, nested_resume, sampling
from .nested_anytime import (DEFAULT_INNER_SAMPLER, AnytimeReport, NestedGuider, inner_sampler_names,
                             inner_scheduler_names, make_nested_sampler, outer_scheduler_names)

CATEGORY = "sampling/nested"


# ------------------------------------------------------------------------------------------
# inputs shared by the two sampler nodes
# ------------------------------------------------------------------------------------------
def _inner_inputs():
    return [
        io.Combo.Input("inner_sampler", options=inner_sampler_names(), default=DEFAULT_INNER_SAMPLER,
                       tooltip="Solver of every inner diffusion (ComfyUI's own samplers). Default euler "
                               "(deterministic): the best first and final picture on the learned demo model. "
                               "euler_ancestral with inner_eta 0.85 is the paper's 'DDIM eta 0.85' inner; "
                               "official_dpm_2s_grid is the paper's DPM-Solver++ inner (best first picture). "
                               "With a deterministic solver keep outer_eta > 0."),
        io.Int.Input("inner_steps", default=8, min=1, max=1000,
                     tooltip="Steps of each inner diffusion (K). Every outer step costs about K model evaluations "
                             "and yields a complete image."),
        io.Combo.Input("inner_scheduler", options=inner_scheduler_names(), default="official",
                       tooltip="Inner sigma schedule, always re-targeted so it starts exactly at the current outer "
                               "sigma. 'official' = the paper's code (evenly spaced timesteps down to 0); any "
                               "ComfyUI scheduler is rescaled to the current noise level."),
        io.Float.Input("inner_eta", default=0.85, min=0.0, max=100.0, step=0.01,
                       tooltip="Ancestral noise (eta) of the inner solver, when it has one (ancestral and SDE "
                               "samplers; euler ignores it). 0.85 = the paper's."),
        io.Float.Input("outer_eta", default=1.0, min=0.0, max=100.0, step=0.01,
                       tooltip="Eta of the outer re-projection. 1 (default) re-noises with fresh noise after every "
                               "outer step; 0 = the paper's deterministic DDIM step. With the default euler inner the "
                               "two gave the same quality on the demo model; with an ancestral inner, 0 was better "
                               "on 2 of 3 seeds."),
    ]


class NestedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NestedSampler",
            display_name="Nested Sampler (anytime)",
            category=CATEGORY,
            description="Nested Diffusion as a SAMPLER for SamplerCustom / SamplerCustomAdvanced. The SIGMAS "
                        "are the outer steps; each outer step runs a short inner diffusion to a complete image, "
                        "which is the step's preview (anytime generation). Works with any guider.",
            inputs=_inner_inputs() + [
                io.Combo.Input("inner_end", options=["zero", "sigma_min"], default="zero",
                               tooltip="'zero' runs each inner diffusion to a clean image; 'sigma_min' stops at "
                                       "the model's smallest sigma like the official code (bit-parity mode)."),
            ],
            outputs=[io.Sampler.Output(tooltip="The Nested sampler; connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, inner_sampler, inner_steps, inner_scheduler, inner_eta, outer_eta, inner_end="zero"):
        options = dict(inner_sampler=inner_sampler, inner_steps=inner_steps, inner_scheduler=inner_scheduler,
                       inner_eta=inner_eta, outer_eta=outer_eta, inner_end=inner_end)
        sampling.check_widgets(cls, **options)
        return io.NodeOutput(make_nested_sampler(**options))


class NestedOfficialOuterScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NestedOfficialOuterScheduler",
            display_name="Nested Official Outer Scheduler",
            category=CATEGORY,
            description="The official Nested Diffusion outer grid: timesteps round(1 + 998 (N-k)/N), then 0.",
            inputs=[io.Model.Input("model", tooltip="The model whose noise schedule is used."),
                    io.Int.Input("steps", default=5, min=1, max=998,
                                 tooltip="Number of outer steps N (at most 998: the grid has 999 distinct "
                                         "timesteps).")],
            outputs=[io.Sigmas.Output(tooltip="N+1 outer sigmas ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps):
        sampling.check_model(model)
        sampling.check_widgets(cls, steps=steps)
        return io.NodeOutput(nested.official_outer_sigmas(sampling.model_sampling_of(model), steps).float())


class NestedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="NestedKSampler",
            display_name="Nested KSampler (anytime)",
            category=CATEGORY,
            description="Anytime generation with Nested Diffusion (Elata et al., WACV 2024). Every outer step runs "
                        "a short inner diffusion and yields a complete image: it is previewed on the node and "
                        "returned in 'intermediates'. Stop early with the time budget (it finishes the current outer "
                        "step) and you still get a usable picture.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (LoRA and model patches apply as usual)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (used when cfg > 1)."),
                io.Latent.Input("latent_image", tooltip="Latent to sample: empty for text-to-image, an encoded "
                                                        "image with denoise < 1 for img2img, with a noise mask "
                                                        "for inpainting."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise; inner process i and the outer steps use their own "
                                     "streams derived from it."),
                io.Int.Input("outer_steps", default=5, min=1, max=1000,
                             tooltip="Outer steps N: how many complete images (previews) you get."),
                io.Int.Input("inner_steps", default=8, min=1, max=1000,
                             tooltip="Steps of each inner diffusion K; total cost is about N x K model "
                                     "evaluations."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Classifier-free guidance scale, applied at every inner evaluation."),
                io.Combo.Input("inner_sampler", options=inner_sampler_names(), default=DEFAULT_INNER_SAMPLER,
                               tooltip="Solver of every inner diffusion (ComfyUI's own samplers). Default euler "
                                       "(deterministic, best on the demo model); euler_ancestral with inner_eta "
                                       "0.85 is the paper's inner."),
                io.Combo.Input("inner_scheduler", options=inner_scheduler_names(), default="official",
                               tooltip="Inner sigma schedule, re-targeted to start exactly at the current outer "
                                       "sigma."),
                io.Combo.Input("outer_scheduler", options=outer_scheduler_names(), default="official_outer",
                               tooltip="Schedule of the outer steps: the official grid or any ComfyUI scheduler."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Below 1: img2img / partial denoising, as in KSampler."),
                io.Float.Input("inner_eta", default=0.85, min=0.0, max=100.0, step=0.01,
                               tooltip="Ancestral noise of the inner solver, when it has one (euler ignores it; "
                                       "0.85 = the paper's)."),
                io.Float.Input("outer_eta", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Eta of the outer re-projection: 1 (default) = fresh noise after every outer "
                                       "step; 0 = the paper's deterministic step (keep 1 with a deterministic "
                                       "inner sampler)."),
                io.Float.Input("time_budget", default=0.0, min=0.0, max=86400.0, step=0.5,
                               tooltip="Seconds (0 = off). When the budget runs out the node finishes the current "
                                       "outer step and returns the latest image as a normal result."),
                io.Int.Input("switch_at_outer_step", default=0, min=0, max=1000,
                             tooltip="With positive_2 connected: the outer step from which the second prompt pair "
                                     "takes over (1 .. outer_steps-1). 0 = no switch."),
                io.Conditioning.Input("positive_2", optional=True,
                                      tooltip="Optional second positive prompt (the paper's user intervention)."),
                io.Conditioning.Input("negative_2", optional=True,
                                      tooltip="Optional second negative prompt; defaults to 'negative'."),
                io.Latent.Input("resume", optional=True,
                                tooltip="Continue a stopped run: connect the 'latent' output of the NestedKSampler "
                                        "that was stopped (Stop & keep or time_budget). Seed, outer_steps, "
                                        "outer_scheduler, denoise and latent_image must be the same; prompts, cfg "
                                        "and inner settings may change. The result equals an uninterrupted run."),
            ],
            outputs=[
                io.Latent.Output("LATENT", display_name="latent", tooltip="The final image latent."),
                io.Latent.Output("INTERMEDIATES", display_name="intermediates",
                                 tooltip="The x0 estimate after every outer step, in order (batch = steps done x "
                                         "batch size)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, outer_steps, inner_steps, cfg, inner_sampler,
                inner_scheduler, outer_scheduler, denoise, inner_eta, outer_eta, time_budget,
                switch_at_outer_step, positive_2=None, negative_2=None, resume=None):
        started = time.monotonic()
        x = sampling.check_latent_for(model, latent_image)
        sampling.check_conds(positive=positive, negative=negative, optional=dict(positive_2=positive_2, negative_2=negative_2))
        sampling.check_widgets(cls, seed=seed, outer_steps=outer_steps, inner_steps=inner_steps, cfg=cfg,
                               inner_sampler=inner_sampler, inner_scheduler=inner_scheduler,
                               outer_scheduler=outer_scheduler, denoise=denoise, inner_eta=inner_eta,
                               outer_eta=outer_eta, time_budget=time_budget, switch_at_outer_step=switch_at_outer_step)
        check_cross_inputs(outer_steps, outer_scheduler, denoise, switch_at_outer_step, positive_2, negative_2)
        custom = nested.official_outer_sigmas if outer_scheduler == "official_outer" else None
        sigmas = sampling.sigmas_with_denoise(model, outer_scheduler, outer_steps, denoise, custom=custom)
        fp = nested_resume.fingerprint(latent_image, sigmas, seed=seed, outer_steps=outer_steps,
                                       outer_scheduler=outer_scheduler, denoise=denoise)
        start = nested_resume.check_resume(resume, fp)
        guider = NestedGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        if positive_2 is not None:
            guider.set_switch(positive_2, negative if negative_2 is None else negative_2, switch_at_outer_step)
        total = max(1, outer_steps * inner_steps * sampling.EVALS_PER_STEP.get(inner_sampler, 1))
        report = AnytimeReport(model, compat.node_id(cls), total, time_budget, started, len(sigmas) - 1,
                               0 if start is None else start["step"])
        sampler = make_nested_sampler(inner_sampler=inner_sampler, inner_steps=inner_steps,
                                      inner_scheduler=inner_scheduler, inner_eta=inner_eta, outer_eta=outer_eta,
                                      on_model_call=report.on_model_call, should_stop=report.should_stop,
                                      sample_ids=latent_image.get("batch_index"), live=report.live,
                                      state=report.state, resume=start)
        try:
            out = sampling.run_guider(guider, model, latent_image, sampler, sigmas, seed,
                                      callback=report.callback, samples=x)
        finally:
            report.close()
        if "x" not in report.state:          # resumed a finished run: its state is unchanged
            report.state.update(x=start["x"])
        out[nested_resume.STATE_KEY] = nested_resume.saved_state(out, report.state, fp)
        return io.NodeOutput(out, report.intermediates(model, out))


def check_cross_inputs(outer_steps, outer_scheduler, denoise, switch_at_outer_step, positive_2, negative_2):
    """The node's rules that involve several inputs: the official grid's length, and the second prompt
    pair with its switch step."""
    total = outer_steps if denoise >= 1.0 else int(outer_steps / denoise)
    if outer_scheduler == "official_outer" and total > 998:
        raise ValueError(f"outer_steps / denoise must be at most 998 with outer_scheduler 'official_outer' (its "
                         f"grid has 999 distinct timesteps); got {total}: use fewer outer steps or another scheduler")
    if positive_2 is None and negative_2 is not None:
        raise ValueError("negative_2 is connected but positive_2 is not; connect positive_2 too")
    if positive_2 is not None:
        if not 1 <= switch_at_outer_step <= outer_steps - 1:
            raise ValueError(f"switch_at_outer_step must be between 1 and outer_steps-1 = {outer_steps - 1} "
                             f"when positive_2 is connected (got {switch_at_outer_step})")
    elif switch_at_outer_step != 0:
        raise ValueError(f"switch_at_outer_step is {switch_at_outer_step} but positive_2 is not connected; "
                         "connect a second prompt or set it to 0")


NODES = [NestedKSampler, NestedSampler, NestedOfficialOuterScheduler]
