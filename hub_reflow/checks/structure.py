"""The structural checks: one function per check name, each turning inspection facts into a verdict
(docs/verify.md#the-checks gives each rule and its reason). ``verify`` reports them, ``push``
refuses on any failure, ``canonicalize`` repairs what a failure allows (canonicalize.REPAIRS)."""

from __future__ import annotations

import json

from ..checkpoint import LINEAGE_NAME, WEIGHTS_NAME
from ..rtc import LEROBOT_EXECUTION_HORIZON, LEROBOT_MAX_GUIDANCE_WEIGHT, recommended, rtc_flags, rtc_problems
from .inspection import Facts, renamed_backbone
from .keys import group_counts, group_of, nbytes
from .report import FAIL, INFO, PASS, SKIP, WARN, Check, counted

# Fields a student may differ in from its teacher on purpose (step count; what push_to_hub sets).
ALLOWED_CONFIG_DIFF = ("num_steps", "repo_id", "push_to_hub", "private", "tags", "license")


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n or name != "other")


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


# ---- config ----------------------------------------------------------------------------------------


def check_config(f: Facts) -> Check:
    c = f.config
    if c.error is not None:
        return Check("config", FAIL, c.error)
    problems, details = [], {}
    if c.unknown:
        problems.append(f"{counted(len(c.unknown), 'field')} LeRobot's SmolVLAConfig does not know: {', '.join(c.unknown)} "
                        "(plain LeRobot refuses it; hub-reflow canonicalize drops them)")
        details["unknown_fields"] = c.unknown
    if c.parse_error is not None:
        problems.append(f"plain LeRobot cannot parse it: {c.parse_error}")
    if c.local_vlm:
        # Fine on this machine (the student only inherits it); plain LeRobot elsewhere could not build
        # the VLM, and a local path would be published: push refuses it (publish_problems).
        problems.append(local_backbone_problem(c.raw.get("vlm_model_name")))
        details["local_vlm_model_name"] = True
    if problems:
        return Check("config", FAIL if len(problems) > c.local_vlm else WARN, "; ".join(problems), details)
    return Check("config", PASS, f"type smolvla, {len(c.raw)} fields, parses with plain LeRobot")


def local_backbone_problem(name) -> str:
    return (f"vlm_model_name is a local path ({name}): fine on this machine, refused by push; name the backbone by its "
            "Hub repo id: hub-reflow canonicalize SRC DST --vlm-repo-id ORG/NAME (or train --vlm-repo-id)")


def check_config_diff(f: Facts) -> Check | None:
    c = f.config
    if c.error is not None:
        return None
    if c.diff is None:
        note = ("load_vlm_weights true" if c.raw.get("load_vlm_weights") else
                "load_vlm_weights false: LeRobot will build every tensor in fp32; right only for a teacher trained from scratch")
        return Check("config.diff", SKIP, f"no teacher to compare with ({note}); pass --teacher",
                     {"load_vlm_weights": c.raw.get("load_vlm_weights")})
    bad = {k: v for k, v in c.diff.items() if k not in ALLOWED_CONFIG_DIFF and not renamed_backbone(k, *v)}
    shown = "; ".join(f"{k}: {json.dumps(s)} (teacher {json.dumps(t)})" for k, (s, t) in c.diff.items())
    extra = f"; the teacher's own unknown fields ignored: {', '.join(c.teacher_unknown)}" if c.teacher_unknown else ""
    if bad:
        summary = f"differs from the teacher beyond num_steps/push fields in {', '.join(bad)}: {shown}{extra}"
    elif c.diff:
        summary = f"differs from the teacher only in {shown}{extra}"
    else:
        summary = f"identical to the teacher's{extra}"
    return Check("config.diff", FAIL if bad else PASS, summary, {"diff": c.diff, "unexpected": sorted(bad)})


# ---- weights -----------------------------------------------------------------------------------------


def _unjudged(f: Facts, name: str, needs_reference: bool) -> Check | None:
    """The verdict when the weights cannot be judged: no file, an unreadable one, no reference."""
    w = f.weights
    if not w.present:
        return Check(name, FAIL, f"{WEIGHTS_NAME} is missing") if name == "weights.keys" else Check(name, SKIP, "no weights file")
    if w.error is not None:
        return Check(name, FAIL if name == "weights.keys" else SKIP, w.error)
    if needs_reference and f.reference.header is None:
        why = "no readable config and no teacher" if f.config.error is not None else "no teacher given"
        return Check(name, SKIP, f"{why} to compare with; pass --teacher")
    return None


def check_weights_teacher(f: Facts) -> Check:
    if (skip := _unjudged(f, "weights.teacher", needs_reference=False)) is not None:
        return skip
    w = f.weights
    if not w.teacher_keys:
        return Check("weights.teacher", PASS, "no teacher tensors under any prefix")
    size = sum(nbytes(w.header[k]) for k in w.teacher_keys)
    return Check("weights.teacher", FAIL, f"{counted(len(w.teacher_keys), 'tensor')} ({_mb(size)}) {'is' if len(w.teacher_keys) == 1 else 'are'} a teacher copy under prefix "
                 f"{', '.join(repr(p) for p in w.teacher_prefixes)}; the file must hold the student only",
                 {"teacher_keys": len(w.teacher_keys), "prefixes": w.teacher_prefixes})


def check_weights_keys(f: Facts) -> Check:
    if (skip := _unjudged(f, "weights.keys", needs_reference=True)) is not None:
        return skip
    own, ref, against = f.weights.own, f.reference.header, f.reference.label
    missing = sorted(set(ref) - set(own))
    unexpected = sorted(set(own) - set(ref))
    shape_bad = sorted(k for k in set(own) & set(ref) if own[k][0] != ref[k][0])
    counts = group_counts(own)
    details = {"keys": len(own), "groups": counts, "reference_groups": group_counts(ref), "missing": missing,
               "unexpected": unexpected, "shape_mismatch": shape_bad}
    if not (missing or unexpected or shape_bad):
        return Check("weights.keys", PASS, f"{counted(len(own), 'key')} ({_fmt_counts(counts)}), names and shapes = {against}", details)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_fmt_counts(group_counts(missing))}; e.g. {missing[0]})")
    if unexpected:
        where = f.weights.own_prefixes
        hint = f" under prefix {', '.join(repr(p) for p in where)}" if where else ""
        parts.append(f"{len(unexpected)} unexpected{hint} (e.g. {unexpected[0]})")
    if shape_bad:
        k = shape_bad[0]
        parts.append(f"{len(shape_bad)} with other shapes (e.g. {k} {list(own[k][0])} vs {list(ref[k][0])})")
    return Check("weights.keys", FAIL, f"{counted(len(own), 'key')} vs {len(ref)} in {against}: " + "; ".join(parts), details)


def dtype_casts(f: Facts) -> dict[str, tuple[str, str]]:
    """Own key -> (its dtype, the reference's) for tensors of the reference's shape in another dtype."""
    own, ref, names = f.weights.own, f.reference.header or {}, f.weights.names
    return {k: (own[k][1], ref[names[k]][1]) for k in own
            if names[k] in ref and own[k][0] == ref[names[k]][0] and own[k][1] != ref[names[k]][1]}


def check_weights_dtypes(f: Facts) -> Check:
    if (skip := _unjudged(f, "weights.dtypes", needs_reference=True)) is not None:
        return skip
    own, ref, names, against = f.weights.own, f.reference.header, f.weights.names, f.reference.label
    layout: dict[str, dict[str, int]] = {}
    for k in own:
        if names[k] in ref and own[k][0] == ref[names[k]][0]:
            by_dtype = layout.setdefault(group_of(names[k]), {})
            by_dtype[own[k][1]] = by_dtype.get(own[k][1], 0) + 1
    wrong = dtype_casts(f)
    if not wrong:
        shown = "; ".join(f"{g} " + ", ".join(f"{d} x{n}" for d, n in sorted(ds.items())) for g, ds in layout.items())
        return Check("weights.dtypes", PASS, f"{shown} = {against}", {"layout": layout})
    pairs: dict[str, int] = {}
    for k, (have, want) in wrong.items():
        label = f"{group_of(names[k])} {have} (expected {want})"
        pairs[label] = pairs.get(label, 0) + 1
    return Check("weights.dtypes", FAIL, f"{counted(len(wrong), 'tensor')} in another dtype than {against}: "
                 + "; ".join(f"{p} x{n}" for p, n in pairs.items())
                 + " (LeRobot casts on load: the runtime dtypes follow load_vlm_weights, the file size does not)",
                 {"wrong": len(wrong), "layout": layout})


def weights_size(f: Facts) -> Check | None:
    if not f.weights.readable:
        return None
    size, ref_size = f.weights.file_bytes, f.reference.file_bytes
    ratio = f", x{size / ref_size:.2f}" if ref_size else ""
    return Check("weights.size", INFO, f"{_mb(size)}" + (f" (teacher {_mb(ref_size)}{ratio})" if ref_size else ""),
                 {"bytes": size, "teacher_bytes": ref_size})


def check_weights_finite(f: Facts) -> Check:
    if (skip := _unjudged(f, "weights.finite", needs_reference=False)) is not None:
        return skip
    bad = f.weights.nonfinite
    if bad:
        groups = group_counts(f.weights.names[k] for k in bad)
        return Check("weights.finite", FAIL, f"NaN/Inf in {counted(len(bad), 'tensor')} ({_fmt_counts(groups)}; e.g. {bad[0]})",
                     {"nonfinite": bad})
    return Check("weights.finite", PASS, f"no NaN or Inf in {counted(len(f.weights.own), 'tensor')}")


def check_weights_vlm(f: Facts) -> Check:
    if (skip := _unjudged(f, "weights.vlm", needs_reference=True)) is not None:
        return skip
    w = f.weights
    if f.teacher is None:
        return Check("weights.vlm", SKIP, "no teacher to compare the frozen VLM with; pass --teacher")
    if w.vlm_total == 0:
        return Check("weights.vlm", FAIL, "no VLM tensor in common with the teacher")
    if w.vlm_diff:
        return Check("weights.vlm", FAIL, f"{len(w.vlm_diff)} of {w.vlm_total} VLM tensors differ from the teacher's "
                     f"(e.g. {w.vlm_diff[0]}, max |diff| {w.vlm_worst:.3g}); the VLM must be the teacher's, frozen",
                     {"differ": w.vlm_diff, "max_abs_diff": w.vlm_worst})
    return Check("weights.vlm", PASS, f"{w.vlm_total} VLM tensors bit-identical to the teacher's", {"tensors": w.vlm_total})


def weights_expert(f: Facts) -> Check | None:
    if f.teacher is None or not f.weights.readable or f.reference.header is None:
        return None
    w = f.weights
    details = {"changed": w.expert_changed, "total": w.expert_total}
    if w.expert_total and not w.expert_changed:
        # The teacher (or an untrained copy of it) is not its own student (docs/canonical.md#lineage).
        return Check("weights.expert", FAIL, f"none of the {w.expert_total} action-expert tensors differs from the teacher's: "
                     "the teacher itself or an untrained copy of it, not a reflow student", details)
    return Check("weights.expert", INFO, f"{w.expert_changed} of {w.expert_total} action-expert tensors differ from the "
                 "teacher's", details)


# ---- processors and lineage ------------------------------------------------------------------------


def check_processors_files(f: Facts) -> Check:
    p = f.processors
    if p.error is not None:
        return Check("processors.files", FAIL, p.error)
    if p.missing or p.configs_differ:
        parts = ([f"missing {', '.join(p.missing)}"] if p.missing else []) + \
                ([f"configs differ from the teacher's: {', '.join(p.configs_differ)}"] if p.configs_differ else [])
        return Check("processors.files", FAIL, "; ".join(parts) + (" (canonicalize --teacher copies missing ones)" if p.missing else ""),
                     {"missing": p.missing, "differ": p.configs_differ})
    configs = ", ".join(n for n in p.wanted if n.endswith(".json"))
    return Check("processors.files", PASS, f"{len(p.wanted)} files ({configs} + {sum(not n.endswith('.json') for n in p.wanted)} "
                 "state files)" + (" with the teacher's configs" if f.teacher is not None else ""))


def check_processors_stats(f: Facts) -> Check:
    p = f.processors
    if p.error is not None:
        return Check("processors.stats", SKIP, p.error)
    if not p.state_files:
        return Check("processors.stats", SKIP, "no normalisation state file to compare")
    if p.stats_differ or p.stats_nonfinite:
        names = sorted(set(p.stats_differ))
        msg = (f"normalisation statistics differ from the teacher's: {', '.join(names[:6])}" if names else "") + \
              ("; " if names and p.stats_nonfinite else "") + \
              (f"NaN/Inf in {', '.join(p.stats_nonfinite[:4])}" if p.stats_nonfinite else "")
        return Check("processors.stats", FAIL, msg + " (the policy would see other inputs and emit other actions than the teacher)",
                     {"differ": p.stats_differ, "nonfinite": p.stats_nonfinite})
    if f.teacher is not None:
        return Check("processors.stats", PASS, f"{p.compared} normalisation tensors identical to the teacher's")
    return Check("processors.stats", PASS, "normalisation statistics finite (no teacher to compare with)")


def check_lineage(f: Facts) -> Check:
    facts = f.lineage
    if not facts.present:
        return Check("lineage", INFO, f"no {LINEAGE_NAME} (not written by hub-reflow): the teacher cannot be cross-checked")
    if facts.error is not None:
        return Check("lineage", FAIL, facts.error)
    recorded = facts.lineage.teacher
    where = f"{recorded.repo_id}@{(recorded.commit or '')[:12]}" if recorded.repo_id else "a local teacher folder"
    if f.teacher_ref is None:
        return Check("lineage", INFO, f"trained from {where} (weights sha256 {recorded.weights_sha256[:12]}); no teacher given")
    if recorded.weights_sha256 and recorded.weights_sha256 != f.teacher_ref.weights_sha256:
        return Check("lineage", FAIL, f"the given teacher's weights (sha256 {f.teacher_ref.weights_sha256[:12]}) are not the ones "
                     f"this student was trained from ({where}, sha256 {recorded.weights_sha256[:12]}); pass that teacher")
    return Check("lineage", PASS, f"the given teacher is the one it was trained from ({where}, sha256 {recorded.weights_sha256[:12]})")


def check_rtc(f: Facts) -> Check | None:
    """Real-time chunking (docs/deploy.md): the settings this step count needs under LeRobot's RTC, and a
    warning when the config carries RTC settings that overshoot the committed actions at its step count."""
    c = f.config
    steps, chunk = (c.raw or {}).get("num_steps"), (c.raw or {}).get("chunk_size")
    if c.error is not None or not isinstance(steps, int) or not isinstance(chunk, int) or steps < 1 or chunk < 1:
        return None
    flags = " ".join(rtc_flags(recommended(steps, chunk)))
    own = c.raw.get("rtc_config")
    if isinstance(own, dict) and own.get("enabled", True):
        problems = rtc_problems(float(own.get("max_guidance_weight", LEROBOT_MAX_GUIDANCE_WEIGHT)),
                                int(own.get("execution_horizon", LEROBOT_EXECUTION_HORIZON)), steps, chunk)
        if problems:
            return Check("rtc", WARN, f"the config's rtc_config: {'; '.join(problems)}; under RTC deploy with {flags}",
                         {"rtc_config": own, "problems": problems, "flags": flags})
    defaults = rtc_problems(LEROBOT_MAX_GUIDANCE_WEIGHT, LEROBOT_EXECUTION_HORIZON, steps, chunk)
    why = f" (LeRobot's defaults: {'; '.join(defaults)})" if defaults else " (LeRobot's defaults)"
    return Check("rtc", INFO, f"under LeRobot's real-time chunking deploy with {flags}{why}", {"flags": flags, "defaults": defaults})


# In report order. Each returns a Check, or None where it does not apply.
STRUCTURE_CHECKS = (
    check_config, check_config_diff, check_weights_teacher, check_weights_keys, check_weights_dtypes, weights_size,
    check_weights_finite, check_weights_vlm, weights_expert, check_processors_files, check_processors_stats, check_lineage,
    check_rtc,
)


def structure_checks(facts: Facts) -> list[Check]:
    return [c for c in (check(facts) for check in STRUCTURE_CHECKS) if c is not None]


def check_label(name: str) -> str:
    """How push names a failed check: ``weights check (weights.finite)``, ``config check``."""
    group = name.split(".")[0]
    return f"{group} check" + (f" ({name})" if name != group else "")


def publish_problems(facts: Facts) -> list[str]:
    """Why ``facts``' checkpoint may not be pushed (or was pulled broken): every failed structural
    check, and a missing lineage file (the model card is drawn from it). Empty: fit to publish."""
    problems = [f"{check_label(c.name)}: {c.summary}" for c in structure_checks(facts) if c.failed]
    if facts.config.local_vlm and not facts.config.error:
        problems.append(f"config check: {local_backbone_problem(facts.config.raw.get('vlm_model_name'))}")
    if not facts.lineage.present:
        problems.append(f"lineage check: {LINEAGE_NAME} is missing (the model card is drawn from it)")
    return problems

