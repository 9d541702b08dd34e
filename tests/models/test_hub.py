"""Hub models by id through the real huggingface_hub client against a hub stand-in on 127.0.0.1: download, revision,
gated, offline, not found, too big, resume; the commit recorded."""

from __future__ import annotations

import pytest
import torch
from hub_stand_in import Repo, folder_files
from tiny_hf import IOI, spread_weights, tiny_family, tiny_hf_tokenizer

from mcp_interp.models import ModelLoadError, ModelPool, normalize_model_id
from mcp_interp.models import hub as hubmod


def hf_repo_files(tmp_path, family: str, seed: int = 0) -> tuple[dict[str, bytes], torch.nn.Module]:
    """A tiny model of `family` as the files of a hub repository (safetensors, config, tokenizer)."""
    tok = tiny_hf_tokenizer()
    torch.manual_seed(seed)
    model = tiny_family(family, len(tok)).eval()
    spread_weights(model, seed)
    d = tmp_path / f"build-{family}-{seed}"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return folder_files(d), model


def max_logit_diff(lm, hf) -> float:
    ids = torch.tensor([lm.tokenizer.encode(IOI)])
    with torch.no_grad():
        return float((lm.model(ids) - hf(ids).logits).abs().max())


def test_ids_parse_and_normalise():
    assert normalize_model_id("pythia-70m") == "EleutherAI/pythia-70m"  # a TransformerLens alias
    assert normalize_model_id("org/name@main") == "org/name"
    assert normalize_model_id("org/name@v1.0") == "org/name@v1.0"
    assert normalize_model_id("smollm2-135m") == "smollm2-135m" and normalize_model_id("toy/x") == "toy/x"
    for bad in ("../x", "a b", "x@../y", "/abs/path", "org/name@"):
        assert hubmod.parse(bad) is None, bad


def test_download_by_id_then_revision_and_offline(hub, tmp_path, monkeypatch):
    files, hf = hf_repo_files(tmp_path, "llama-gqa")
    old_files, old_hf = hf_repo_files(tmp_path, "llama-gqa", seed=1)
    old = Repo(old_files).commit
    files.update({"README.md": b"# not needed", "onnx/model.onnx": b"x" * 100})  # sub-folders: other formats
    repo = hub.add("acme/tiny-llama", Repo(files, revisions={"v0": old}, older={old: old_files}))
    pool = ModelPool(device="cpu")
    seen = []
    lm = pool.get("acme/tiny-llama", progress=lambda f, m: seen.append((f, m)))
    assert max_logit_diff(lm, hf) < 1e-4
    assert lm.revision == repo.commit and lm.weight_hash == repo.commit and repo.commit in lm.source
    assert seen and seen[-1][0] == 1.0 and any("MiB" in m for _, m in seen)
    fetched = {p.rsplit("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in hub.log if m == "GET" and "/resolve/" in p}
    assert "README.md" not in fetched and "onnx/model.onnx" not in fetched and "model.safetensors" in fetched
    assert pool.weight_identity("acme/tiny-llama") == repo.commit  # the run cache keys on the commit

    # a revision (a tag naming an older commit) is another model, at its own commit
    lm0 = pool.get("acme/tiny-llama@v0")
    assert lm0.revision == old and max_logit_diff(lm0, old_hf) < 1e-4

    # the local listing shows the cached repository with its revisions and size
    listed = {a["id"]: a for a in pool.available()}["acme/tiny-llama"]
    assert listed["kind"] == "hub" and listed["revisions"]["main"] == repo.commit and listed["size_mb"] > 0

    # offline: the cached revision loads without a single request; an uncached id says "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.log)
    off = ModelPool(device="cpu")
    assert off.get("acme/tiny-llama").revision == repo.commit
    with pytest.raises(ModelLoadError, match="offline"):
        off.get("acme/never-downloaded")
    assert len(hub.log) == n


def test_official_name_downloads_through_transformer_lens(hub, tmp_path):
    files, hf = hf_repo_files(tmp_path, "gpt2")
    hub.add("gpt2", Repo(files))
    lm = ModelPool(device="cpu").get("gpt2")
    assert lm.model.cfg.default_prepend_bos  # TL's convention for GPT-2
    ids = torch.tensor([lm.tokenizer.encode(IOI)])
    with torch.no_grad():
        assert float((lm.model(ids, prepend_bos=False) - hf(ids).logits).abs().max()) < 1e-4


def test_gated_not_found_and_revision_errors(hub, tmp_path, monkeypatch):
    files, _ = hf_repo_files(tmp_path, "gpt2")
    hub.add("acme/gated", Repo(files, gated_token="hf_secret"))
    pool = ModelPool(device="cpu")
    with pytest.raises(ModelLoadError) as e:
        pool.get("acme/gated")
    msg = str(e.value)
    assert "gated" in msg and "acme/gated" in msg and "HF_TOKEN" in msg and "licence" in msg
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ModelLoadError, match="token in use has no access"):
        pool.get("acme/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert pool.get("acme/gated").revision == hub.repos["acme/gated"].commit

    with pytest.raises(ModelLoadError) as e:
        pool.get("acme/no-such-model")
    assert "not found on the hub" in str(e.value)
    with pytest.raises(ModelLoadError, match="Did you mean: smollm2-135m"):
        pool.get("smollm2-13m")
    with pytest.raises(ModelLoadError, match="revision 'nope' not found"):
        pool.get("acme/gated@nope")


def test_too_big_for_disk_or_memory_is_refused_before_downloading(hub, tmp_path):
    files, _ = hf_repo_files(tmp_path, "gpt2")
    hub.add("acme/huge-disk", Repo(files, fake_sizes={"model.safetensors": 1 << 50}))
    hub.add("acme/huge-mem", Repo(files, parameters=3_000_000_000))
    pool = ModelPool(device="cpu", memory_budget_bytes=4 << 30)
    with pytest.raises(ModelLoadError, match="GiB free") as e:
        pool.get("acme/huge-disk")
    assert "HF_HUB_CACHE" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        pool.get("acme/huge-mem")
    msg = str(e.value)
    assert "3.00 B parameters" in msg and "Nothing was downloaded" in msg and "bfloat16" not in msg  # 6 GB > 4 GiB
    pool8 = ModelPool(device="cpu", memory_budget_bytes=8 << 30)
    with pytest.raises(ModelLoadError, match="dtype='bfloat16'"):  # 12 GB in float32, 6 GB in bfloat16
        pool8.get("acme/huge-mem")
    assert not any(m == "GET" and "/resolve/" in p and "huge" in p for m, p, _ in hub.log)


def test_pickled_weights_only_when_allowed(hub, tmp_path, monkeypatch):
    import io

    files, hf = hf_repo_files(tmp_path, "gpt2")
    buf = io.BytesIO()
    torch.save(hf.state_dict(), buf)
    files["pytorch_model.bin"] = buf.getvalue()
    del files["model.safetensors"]
    hub.add("acme/pickled", Repo(files))
    with pytest.raises(ModelLoadError, match="MCP_INTERP_ALLOW_PICKLE=1"):
        ModelPool(device="cpu").get("acme/pickled")
    monkeypatch.setenv("MCP_INTERP_ALLOW_PICKLE", "1")
    assert max_logit_diff(ModelPool(device="cpu").get("acme/pickled"), hf) < 1e-4


def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes in 10 MB chunks and resumes from the last whole chunk; a 150 KB file in 16 KiB chunks
    # stands for a large file
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    files, hf = hf_repo_files(tmp_path, "gpt2")
    cut = 3 * 16384
    assert len(files["model.safetensors"]) > 2 * cut
    hub.add("acme/flaky", Repo(files, drop_after={"model.safetensors": cut}))
    lm = ModelPool(device="cpu").get("acme/flaky")
    assert max_logit_diff(lm, hf) < 1e-4
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == [None, f"bytes={cut}-"]  # the rest only, not the whole file again


def test_cancelled_download_keeps_finished_files_and_loads_later(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)  # progress per 16 KiB, as a big file gets per 10 MB
    files, hf = hf_repo_files(tmp_path, "gpt2")
    assert len(files["model.safetensors"]) > 8 * 16384
    repo = hub.add("acme/slow", Repo(files, slow={"model.safetensors": 0.02}))

    class Stop(Exception):
        pass

    def stop_midway(fraction, message):
        if "model.safetensors" in message and 0.2 < fraction < 0.9:
            raise Stop

    monkeypatch.setattr(hubmod._Bytes, "add", _eager(hubmod._Bytes.add))
    with pytest.raises(Stop):  # the caller's own exception (a cancelled job), not a load failure
        ModelPool(device="cpu").get("acme/slow", progress=stop_midway)
    assert not list((tmp_path / "hf-cache").rglob("*.incomplete"))  # huggingface_hub drops a partial file
    repo.slow.clear()
    lm = ModelPool(device="cpu").get("acme/slow")
    assert max_logit_diff(lm, hf) < 1e-4
    gets = [p.rsplit("/", 1)[1] for m, p, _ in hub.log if m == "GET" and "/resolve/" in p]
    assert gets.count("model.safetensors") == 2 and gets.count("config.json") == 1  # finished files kept


def _eager(add):
    """`_Bytes.add` without its 0.5 s report throttle, so a test sees every chunk."""
    def eager(self, n):
        self.last = 0.0
        return add(self, n)
    return eager


def test_a_new_commit_on_the_hub_is_a_new_weight_identity(hub, tmp_path):
    """The run cache keys on the commit: when main moves, the next load fetches it and the identity follows."""
    files, _ = hf_repo_files(tmp_path, "gpt2")
    first = hub.add("acme/moving", Repo(files))
    assert ModelPool(device="cpu").get("acme/moving").weight_hash == first.commit
    files2, hf2 = hf_repo_files(tmp_path, "gpt2", seed=3)
    second = hub.add("acme/moving", Repo(files2, older={first.commit: files}))
    assert second.commit != first.commit
    pool = ModelPool(device="cpu")
    lm = pool.get("acme/moving")
    assert lm.weight_hash == second.commit and pool.weight_identity("acme/moving") == second.commit
    assert max_logit_diff(lm, hf2) < 1e-4
    assert pool.get(f"acme/moving@{first.commit}").weight_hash == first.commit  # a commit pins the old weights


def test_an_unreachable_hub_falls_back_to_the_cached_commit(hub, tmp_path, monkeypatch):
    files, hf = hf_repo_files(tmp_path, "gpt2")
    repo = hub.add("acme/cached", Repo(files))
    ModelPool(device="cpu").get("acme/cached")
    from huggingface_hub import constants

    dead = "http://127.0.0.1:9"  # nothing listens there: connection refused
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    lm = ModelPool(device="cpu").get("acme/cached")
    assert lm.revision == repo.commit and max_logit_diff(lm, hf) < 1e-4
    with pytest.raises(ModelLoadError, match="could not reach the hub"):  # nothing cached: said as it is
        ModelPool(device="cpu").get("acme/elsewhere")
