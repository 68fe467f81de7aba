"""``hub-reflow verify --compile`` (``hub_reflow/checks/compiled.py``): student and teacher timed through
LeRobot's own ``compile_model`` path, compile time apart from the steady state, speed-ups, on the
device it names. Inductor's code generation takes minutes on this CPU, so the measurement runs
here with Dynamo's eager backend forced (``torch.compiler.set_stance``): LeRobot's ``sample_actions``
is really traced and guarded, only the generated kernels are PyTorch's own; benchmarks/gpu.sh runs
the real thing on a GPU."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from hub_reflow.checks import compiled


@pytest.fixture(scope="module")
def student(world, tmp_path_factory):
    """A 1-step checkpoint for timing: the teacher's files with num_steps 1 (latency does not
    depend on the weights)."""
    folder = tmp_path_factory.mktemp("compiled") / "student"
    shutil.copytree(world.teacher, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_steps"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def keep_matmul_precision():
    old = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(old)


def test_load_goes_through_lerobots_compile_model(world, keep_matmul_precision):
    policy, pre = compiled.load(world.teacher, torch.device("cpu"), "reduce-overhead")
    assert policy.config.compile_model is True and policy.config.compile_mode == "reduce-overhead"
    assert hasattr(policy.model.sample_actions, "_torchdynamo_orig_callable")  # LeRobot's torch.compile wrapper
    assert torch.get_float32_matmul_precision() == "high"  # what LeRobot's compile path sets
    eager, _ = compiled.load(world.teacher, torch.device("cpu"), None)
    assert eager.config.compile_model is False and not hasattr(eager.model.sample_actions, "_torchdynamo_orig_callable")
    obs = compiled.synthetic_observation(policy.config)
    assert obs["observation.images.cam"].shape == (1, 3, 32, 32) and obs["observation.state"].shape == (1, 2)
    assert pre(dict(obs))["observation.language.tokens"].shape[0] == 1


def test_measure_student_and_teacher(world, student, keep_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    with torch.compiler.set_stance(force_backend="eager"):
        r = compiled.measure(student, world.teacher, device="cpu", repeats=3, warmup=1)
    assert torch.get_float32_matmul_precision() == "highest"  # LeRobot's setting does not leak
    assert r["device"] == "cpu" and r["hardware"].startswith("CPU ") and r["mode"] == "reduce-overhead"
    assert r["student"]["steps"] == 1 and r["teacher"]["steps"] == 10
    for who in ("student", "teacher"):
        m = r[who]
        for key in ("eager_ms", "compiled_ms", "first_call_s", "warmup_s", "eager_first_call_s"):
            assert math.isfinite(m[key]) and m[key] > 0, (who, key)
        assert len(m["raw_ms"]["eager"]) == len(m["raw_ms"]["compiled"]) == 3
        assert m["compiled_ms"] == pytest.approx(sorted(m["raw_ms"]["compiled"])[1])  # the median of 3
        assert m["compile_speedup"] == pytest.approx(m["eager_ms"] / m["compiled_ms"])
        # The first call traces LeRobot's sample_actions: seconds, against milliseconds per chunk after.
        assert m["first_call_s"] > 10 * m["compiled_ms"] / 1000
        assert m["max_abs_diff_vs_eager"] == 0.0  # the eager backend runs the same operators
        # fast_inference of the eager policy: on the CPU the same operators, eagerly
        assert m["fast_max_abs_diff_vs_eager"] == 0.0 and m["fast_mode"] == "eager (static-shape path, no CUDA graph)"
        assert len(m["raw_ms"]["fast"]) == 3 and m["fast_ms"] > 0 and m["fast_capture_s"] == 0.0
    assert r["speedup_compiled"] == pytest.approx(r["teacher"]["compiled_ms"] / r["student"]["compiled_ms"])
    assert r["speedup_eager"] == pytest.approx(r["teacher"]["eager_ms"] / r["student"]["eager_ms"])
    line = compiled.summary(r)
    assert line.startswith("torch.compile(mode=reduce-overhead) through LeRobot's compile_model on CPU ")
    assert "student @1" in line and "teacher @10" in line and "first call" in line
    assert "; hub_reflow.fast_inference (eager (static-shape path, no CUDA graph)): student @1 " in line


def test_verify_compile_adds_an_info_check(world, student, monkeypatch, capsys):
    from hub_reflow.cli import main

    seen = {}

    def fake_measure(s, t, *, mode):
        seen.update(student=s, teacher=t, mode=mode)
        one = {"steps": 1, "eager_ms": 40.0, "compiled_ms": 10.0, "compile_speedup": 4.0, "first_call_s": 60.0,
               "warmup_s": 1.0, "max_abs_diff_vs_eager": 0.01}
        return {"mode": mode, "hardware": "NVIDIA H100 (CUDA 13.0), torch 2.11", "student": one,
                "teacher": {**one, "steps": 10, "compiled_ms": 30.0}, "speedup_compiled": 3.0, "speedup_eager": 1.0}

    monkeypatch.setattr(compiled, "measure", fake_measure)
    main(["verify", str(student), "--teacher", str(world.teacher), "--compile", "--compile-mode", "max-autotune", "--json"])
    report = json.loads(capsys.readouterr().out)
    check = next(c for c in report["checks"] if c["name"] == "speed.compiled")
    assert check["status"] == "info" and check["details"]["speedup_compiled"] == 3.0
    assert seen == {"student": student, "teacher": world.teacher, "mode": "max-autotune"}
    assert "on NVIDIA H100 (CUDA 13.0), torch 2.11, batch 1: student @1 10.0 ms compiled vs 40.0 ms eager" in check["summary"]
    main(["verify", str(student), "--teacher", str(world.teacher), "--json"])
    assert "speed.compiled" not in {c["name"] for c in json.loads(capsys.readouterr().out)["checks"]}
    with pytest.raises(SystemExit) as e:
        main(["verify", str(student), "--compile", "--compile-mode", "fast"])
    assert e.value.code == 2
