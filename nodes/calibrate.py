"""ProCache Schedule Search: the paper's offline search, run on the user's own model inside ComfyUI.

One full-compute reference sampling, then one sampling per constrained candidate schedule (drawn
uniformly by procache_core.search), each scored against the reference with the proxy metric. A
uniform-interval schedule of the same budget is scored too, so the report shows what the search bought.
A single progress bar spans every sampling; an interrupt stops the search before anything is saved.
"""
from __future__ import annotations

import datetime as _dt
import logging

import torch
from comfy_api.latest import io

from ..procache_core import profile_search, proxy, search
from ..procache_core.baselines import uniform_schedule
from ..procache_core.presets import Preset, save_preset, validate_preset_name
from ..procache_core.settings import SelectiveSettings
from .preset_files import user_presets_dir
from .schedule_loader import ScheduleSocket
from .selective_settings import SelectiveSocket

log = logging.getLogger("ProCache")

METHODS = ("sampled", "profile", "both")
# the interval ordering rule of the search space. benchmarks/search_space.py (digits DiT, held-out seeds,
# benchmarks/results/search_space_cpu.md) found any-order worse: sampled search 1 row better / 4 worse on both
# metrics, profile search 0 / 8; so the paper's non-increasing rule stays the default, for both methods
DEFAULT_NON_INCREASING = True


def _sample(model, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive, negative, on_step) -> torch.Tensor:
    import comfy.sample

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=1.0, noise_mask=latent.get("noise_mask"), seed=seed, disable_pbar=True,
                               callback=lambda step, x0, x, total: on_step(x0))


def _noise_of_run(model, steps: int, sampler_name: str, scheduler: str) -> tuple[float, ...] | None:
    """Noise position (timestep percent) of each of the calibrated sampler's steps, or None."""
    try:
        import comfy.samplers

        from .noise_axis import noise_positions

        ks = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler,
                                     denoise=1.0)
        sig = [float(v) for v in ks.sigmas.float().cpu().tolist()]
        pos, _ = noise_positions(model.get_model_object("model_sampling"), sig)
        return tuple(pos[:steps]) if len(sig) == steps + 1 else None
    except Exception:  # noqa: BLE001 - the preset is still valid without a record (runs as written)
        log.debug("ProCache search: no noise record for %s/%s", sampler_name, scheduler, exc_info=True)
        return None


def _patched(model, preset: Preset, selective: SelectiveSettings | None):
    from .apply import ProCacheApply

    return ProCacheApply.execute(model, preset, selective).args[0]


class ProCacheScheduleSearch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="ProCacheScheduleSearch",
            display_name="ProCache Schedule Search",
            category="ProCache",
            description="Finds the best ProCache schedule for this model, prompt and sampler: samples once with "
                        "full compute, then with K constrained candidate schedules, and keeps the candidate "
                        "closest to full compute. Costs about K+2 samplings.",
            inputs=[
                io.Model.Input("model", tooltip="the plain MODEL (not the output of ProCache Apply)"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="sampling seed of every run"),
                io.Int.Input("steps", default=20, min=2, max=1000, tooltip="sampler steps the schedule is for"),
                io.Float.Input("cfg", default=4.5, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="dpmpp_2m"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="karras"),
                io.Float.Input("target_speedup", default=2.0, min=1.0, max=20.0, step=0.05,
                               tooltip="sets the number of full steps (budget = steps / speed-up) unless "
                                       "budget is above 0"),
                io.Int.Input("budget", default=0, min=0, max=1000, tooltip="number of full steps; 0 = from target_speedup"),
                io.Int.Input("vmin", default=1, min=0, max=100, tooltip="shortest reuse interval (cached steps in a row)"),
                io.Int.Input("vmax", default=4, min=0, max=100, tooltip="longest reuse interval"),
                io.Int.Input("k", default=5, min=1, max=64, tooltip="candidate schedules to try"),
                io.Int.Input("search_seed", default=0, min=0, max=2**31 - 1, tooltip="seed of the candidate draw"),
                io.Combo.Input("metric", options=sorted(proxy.METRICS), default="rel_l2",
                               tooltip="proxy metric against the full-compute result"),
                SelectiveSocket.Input("selective", optional=True,
                                      tooltip="selective settings; when given, candidates get selective steps"),
                io.String.Input("save_as", default="", optional=True,
                                tooltip="when set, the best schedule is saved as user preset user/<name>"),
                io.Combo.Input("method", options=list(METHODS), default=METHODS[0], optional=True,
                               tooltip="sampled: K candidates drawn from the constrained space (non-increasing "
                                       "reuse runs), each sampled. profile: from the full-compute run alone, how "
                                       "far the prediction moves between steps, and the exact best schedule for "
                                       "that profile under the same interval rules; 2 samplings in all. "
                                       "both: the profile's schedule joins the sampled candidates."),
                io.Boolean.Input("non_increasing", default=DEFAULT_NON_INCREASING, optional=True,
                                 tooltip="on: reuse runs never grow along the run (long reuse early, short late; "
                                         "the paper's rule). off: runs in any order, so dense-early schedules "
                                         "(short reuse first, as karras-like schedulers favour) are allowed too; "
                                         "a larger space, so more candidates (k) are worth it. Applies to every "
                                         "method."),
            ],
            outputs=[ScheduleSocket.Output(display_name="schedule"), io.String.Output(display_name="report")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
                target_speedup, budget, vmin, vmax, k, search_seed, metric, selective=None,
                save_as: str = "", method: str = "sampled",
                non_increasing: bool = DEFAULT_NON_INCREASING) -> io.NodeOutput:
        import comfy.utils

        from ..procache_core.errors import ProCacheError
        from .runtime_bridge import config_of

        if config_of(model) is not None:  # its "full compute" reference would itself be cached
            raise ProCacheError("model", "is the output of ProCache Apply, so the full-compute reference of the "
                                         "search would itself be cached.",
                                "connect the plain MODEL (the loader's output, before ProCache Apply) to Schedule "
                                "Search.")
        save_as = (save_as or "").strip()
        if save_as:
            validate_preset_name(save_as)
        if budget <= 0:
            budget = search.budget_for_speedup(steps, target_speedup, vmin, vmax)
        if method not in METHODS:
            raise ProCacheError("method", f"is {method!r}, not one of {list(METHODS)}.", "pick sampled, profile or both.")
        sel = selective.validate() if selective is not None else None
        use_sel = bool(sel is not None and sel.enabled)
        candidates = [] if method == "profile" else \
            search.sample_patterns(steps, budget, vmin, vmax, k, search_seed, selective=use_sel,
                                   non_increasing=bool(non_increasing))
        if method != "sampled":  # the profile's schedule must exist before anything is sampled
            search.PatternSpace(steps, budget, vmin, vmax, bool(non_increasing))
            if not (budget * (vmin + 1) <= steps <= budget * (vmax + 1)):
                raise search._infeasible(steps, budget, vmin, vmax)
        uniform = uniform_schedule(steps, budget)
        uniform = uniform.with_selective(True) if use_sel else uniform
        pbar = comfy.utils.ProgressBar((len(candidates) + 2 + (method != "sampled")) * steps)
        predictions: list[torch.Tensor] = []

        def record(x0) -> None:
            pbar.update(1)
            if x0 is not None and method != "sampled":
                predictions.append(x0.detach().float().cpu())

        run = lambda m, cb=lambda x0: pbar.update(1): _sample(  # noqa: E731
            m, latent_image, seed, steps, cfg, sampler_name, scheduler, positive, negative, cb)

        reference = run(model, record).float()
        profile = None
        if method != "sampled":
            if len(predictions) != steps:
                raise ProCacheError("sampler_name", f"{sampler_name} reported {len(predictions)} of {steps} steps, so "
                                    "no per-step profile could be recorded.", "use method sampled with this sampler.")
            profile = profile_search.best_schedule(profile_search.reuse_cost(predictions), budget, vmin, vmax,
                                                   bool(non_increasing))
            profile = profile.with_selective(True) if use_sel else profile
        scores = []
        for i, sched in enumerate(candidates):
            preset = Preset(name=f"candidate-{i}", schedule=sched, family="any")
            scores.append(proxy.METRICS[metric](run(_patched(model, preset, sel)).float(), reference))
        uni_score = proxy.METRICS[metric](run(_patched(model, Preset(name="uniform", schedule=uniform), sel)).float(),
                                          reference)
        prof_score = None
        if profile is not None:
            prof_score = proxy.METRICS[metric](
                run(_patched(model, Preset(name="profile", schedule=profile), sel)).float(), reference)
            if method == "profile":  # the profile's schedule is the one candidate
                candidates, scores = [profile], [prof_score]
        best = proxy.best_index(scores, metric)
        profile_wins = (method == "both" and prof_score != scores[best]
                        and proxy.best_index([scores[best], prof_score], metric) == 1)
        if profile_wins:
            candidates, scores = candidates + [profile], scores + [prof_score]
            best = len(scores) - 1
        # uniform reuse is scored too; when it is closer to full compute on this model, it is the answer
        uniform_wins = (uni_score != scores[best] and proxy.best_index([scores[best], uni_score], metric) == 1)
        winner = uniform if uniform_wins else candidates[best]
        noise = _noise_of_run(model, steps, sampler_name, scheduler)
        best_preset = Preset(
            name=save_as or "searched", schedule=winner, family="any", model="",
            selective=sel or SelectiveSettings(), noise=noise,
            provenance={"kind": "searched", "source": "ProCache Schedule Search node",
                        "sampler": f"{sampler_name}/{scheduler}, {steps} steps",
                        "budget": budget, "objective": f"{metric} vs full compute, seed {seed}, cfg {cfg}",
                        "noise_axis": ("timestep percent of each step of this sampler and scheduler" if noise
                                       else "not recorded: runs as written at this step count"),
                        "date": _dt.date.today().isoformat(),
                        "notes": (f"uniform reuse: it beat all {len(candidates)} candidates"
                                  if uniform_wins else f"best of {len(candidates)} candidates")
                                 + f" (method {method}, vmin={vmin}, vmax={vmax}, "
                                   f"{'non-increasing' if non_increasing else 'any-order'} intervals, "
                                   f"search_seed={search_seed})"})
        shown = candidates[:-1] if profile_wins else candidates
        lines = [f"ProCache search: {steps} steps, budget {budget} full, {len(shown)} candidates, {metric}"
                 + ("" if method == "sampled" else f", method {method}")
                 + ("" if non_increasing else ", any-order intervals")
                 + f"; scored on seed {seed}: judge the schedule on other seeds"]
        for i, (sched, sc) in enumerate(zip(shown, scores)):
            mark = "*" if i == best and not (method == "profile" or profile_wins) else " "
            if method != "profile":
                lines.append(f"{mark} {sched.to_string()}  {metric}={sc:.5f}")
        if profile is not None:
            star = "*" if method == "profile" or profile_wins else " "
            lines.append(f"{star} profile {profile.to_string()}  {metric}={prof_score:.5f}  (one-run profile, exact "
                         "programme)")
        lines.append(f"  uniform {uniform.to_string()}  {metric}={uni_score:.5f}")
        beats = scores[best] != uni_score and proxy.best_index([uni_score, scores[best]], metric) == 1
        lines.append(f"best {metric}={scores[best]:.5f} vs uniform {metric}={uni_score:.5f}: "
                     f"{'better than uniform' if beats else 'NOT better than uniform'}")
        if uniform_wins:
            lines.append(f"chosen: uniform {uniform.to_string()} (it scored better on this model and sampler)")
        if save_as:
            path = user_presets_dir() / f"{save_as}.yaml"
            save_preset(best_preset, path)  # written only after every run finished
            lines.append(f"saved as user/{save_as} ({path.name})")
        report = "\n".join(lines)
        log.info("%s", report)
        return io.NodeOutput(best_preset, report, ui={"text": [report]})
