"""The README's "Your own model" section, run as written (issue #17, done-when): its
files are written, its Python blocks run in order in one namespace, its commands run
in-process, in a fresh folder; then the numbers they print are checked."""

from __future__ import annotations

import copy
import re
import runpy
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lossmap as lm
from lossmap.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def section_blocks(title: str) -> list[tuple[str, str]]:
    """The fenced code blocks ``(language, code)`` of the README section ``## title``."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


def _command(line: str, capsys) -> str:
    argv = shlex.split(line)
    if argv[0] == "python":
        runpy.run_path(argv[1], run_name="__main__")
        return ""
    assert argv[0] == "lossmap", line
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert e.value.code in (0, None), out.err
    return out.out + out.err


@pytest.mark.slow
def test_your_own_model_section_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    blocks = section_blocks("Your own model")
    assert [lang for lang, _ in blocks] == [
        "python",
        "python",
        "bash",
        "python",
        "python",
        "python",
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("cnn", "train"):  # another test's module of the same name
        monkeypatch.delitem(sys.modules, mod, raising=False)
    namespace: dict[str, object] = {}
    after: list[dict[str, object]] = []  # the namespace after each Python block
    printed: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lang, code in blocks:
            first = code.splitlines()[0]
            if lang == "python" and re.fullmatch(r"# \w+\.py", first):
                Path(first[2:]).write_text(code)  # a file the user writes
            elif lang == "python":
                exec(compile(code, "README.md", "exec"), namespace)
                after.append(dict(namespace))
                printed.append(capsys.readouterr().out)
            else:
                for line in code.strip().splitlines():
                    printed.append(_command(line, capsys))
    # The commands: the plane holds θ0 and says nothing of a random network (it has a
    # checkpoint); the path's barrier is printed.
    plane_out, connect_out = printed[1], printed[2]
    assert "random" not in plane_out and "at θ0" in plane_out
    assert "barrier along the straight path: train/loss" in connect_out
    # Python, the CNN: the plane's centre is checkpoint 0's loss; endpoint b of the path
    # is cnn1 with its BatchNorm statistics recomputed, as in the command's path.
    cnn = after[0]
    surf, path, land, b = cnn["surf"], cnn["path"], cnn["land"], cnn["b"]
    assert surf.summary("train/loss")["at_theta0"] == pytest.approx(land.loss(), rel=1e-6)
    at_b = b.at({**b.point(), **lm.connect.recompute_bn(b)})
    i1 = int(np.argmin(np.abs(path.alpha - 1.0)))  # t = 1 (the span is about -0.5..1.5)
    assert path["train/loss"][i1] == pytest.approx(at_b.loss(), abs=1e-6)
    cli_path = lm.load(tmp_path / "runs" / "cnn-path" / "path.h5")
    np.testing.assert_allclose(cli_path["train/loss"], path["train/loss"], rtol=0, atol=1e-6)
    # Tied weights: one parameter; the state dict with both names loads, and its loss
    # is the tied model's own; the DataParallel-wrapped model is the same function.
    tied = after[1]
    tl, other, fresh = tied["land"], tied["other"], tied["fresh"]
    assert "head.weight" not in tl.theta0 and tl.aliases == {"head.weight": "emb.weight"}
    x, y = tied["data"]
    with torch.no_grad():
        assert other.loss() == pytest.approx(float(nn.functional.cross_entropy(fresh(x), y)))
    assert printed[-2].strip().splitlines()[-1] == "True"
    unwrapped = [w for w in caught if "wrapper" in str(w.message)]
    assert len(unwrapped) == 1 and "DataParallel" in str(unwrapped[0].message)
    # The tiny GPT-2: lm_head tied to the embedding; the plane's centre is the per-token
    # mean over both padded batches, counted by hand; the top eigenvalue is a Rayleigh
    # quotient of the Hessian (an HVP with its own vector).
    gpt = after[2]
    gl, gpt_plane, batches = gpt["gpt_land"], gpt["gpt_plane"], gpt["batches"]
    assert gl.aliases == {"lm_head.weight": "transformer.wte.weight"}
    total, count = 0.0, 0
    model = copy.deepcopy(gpt["gpt"]).eval()  # as lossmap evaluates it: no dropout
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for i, row in enumerate(b["labels"]):
                for t in range(1, len(row)):
                    if row[t] != -100:
                        total += float(nn.functional.cross_entropy(logits[i, t - 1], row[t]))
                        count += 1
    assert count == 15 + 8 + 4 + 11 + 2
    at0 = gpt_plane.summary()["at_theta0"]
    assert at0 == pytest.approx(total / count, rel=1e-5)
    assert gpt["same"].loss() == pytest.approx(at0, rel=1e-6)
    top = gpt["gpt_top"]
    v = top.vectors[0]
    hv = gl.hvp(None, v)
    rayleigh = float(lm.vectors.dot(v, hv) / lm.vectors.dot(v, v))
    assert top.values[0] == pytest.approx(rayleigh, rel=1e-3)
