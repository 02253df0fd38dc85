"""The embedded SmolLM2 model converts once to a plain checkpoint; other ids resolve offline or fail in one line."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from policy.models import EMBEDDED, ModelError, resolve_model


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("home")
    return root, resolve_model(EMBEDDED, root)


def test_embedded_converts_to_a_loadable_bf16_checkpoint(embedded):
    _, path = embedded
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.float().generate(**ids, max_new_tokens=12, do_sample=False)  # fp32: fast on any CPU
    assert "4" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_embedded_is_converted_once(embedded):
    root, path = embedded
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(EMBEDDED, root) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not written again
    assert not list(path.parent.glob(".tmp-*"))


def test_local_folder_is_used_as_is(embedded):
    _, path = embedded
    assert resolve_model(str(path)) == path


@pytest.mark.parametrize("model, expected", [
    ("/no/such/checkpoint", "expected a checkpoint folder with config.json"),
    ("Qwen/Qwen2.5-3B-Instruct-not-cached", "is not available offline"),
    ("not a valid id!!", "is not available offline"),
])
def test_unavailable_model_is_one_clear_line(model, expected, tmp_path):
    with pytest.raises(ModelError, match=expected) as e:
        resolve_model(model, tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_two_first_runs_convert_the_embedded_model_together(tmp_path):
    """Two first runs on a fresh root both convert the embedded model; the second to finish used to fail with
    `OSError: Directory not empty` (issue 13). Now both return the one folder and nothing temporary is left."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys; from policy.models import EMBEDDED, resolve_model; print(resolve_model(EMBEDDED, sys.argv[1]))"
    repo = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read().strip(), p.stderr.read()) for p in procs]
    assert [rc for rc, _, _ in results] == [0, 0], [err[-500:] for _, _, err in results]
    assert {out for _, out, _ in results} == {str(tmp_path / "models" / EMBEDDED)}
    assert [p.name for p in (tmp_path / "models").iterdir()] == [EMBEDDED]
