"""`shoal quantize` writes GGUF files that llama.cpp's own Python reader (the `gguf` package,
gguf-py) reads: the metadata llama.cpp needs, every tensor under llama.cpp's name, and blocks
that gguf-py dequantizes back to the source weights (exactly for f32, with the q/k rows
permuted as llama.cpp's convert_hf_to_gguf.py permutes them; within each type's error for the
block types).

Split files too: a model cut into `NAME-0000i-of-0000N.gguf` by gguf-py's writer (as llama.cpp's
gguf-split cuts one) opens from its first split and gives the same logits, bit for bit, as the
whole file, in one process and through two workers on the splits (f32 wire); a missing split or
a later split given first is refused with the file named.

usage: python3 Tests/e2e/test_gguf.py SHOAL
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import serve  # Tests/e2e/serve.py: processes on loopback, killed at exit
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

shoal = sys.argv[1]
work = tempfile.mkdtemp(prefix="shoal-gguf-")
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def safetensors(path):
    """A float32 safetensors file as {name: array}, read by hand (no extra package)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", e["dtype"]
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(e["shape"])
    return out


def to_interleaved(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute: transformers' q/k rows back to Meta's order."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


try:
    model = f"{work}/model"
    subprocess.run([shoal, "synth", "--out", model, "--dim", "256", "--hidden", "512", "--heads", "8",
                    "--kv-heads", "4", "--vocab", "512", "--layers", "2", "--dtype", "f32"], check=True,
                   stdout=subprocess.DEVNULL)
    src = safetensors(f"{model}/model.safetensors")
    L = "model.layers.{}."
    sources = {"token_embd.weight": src["model.embed_tokens.weight"], "output.weight": src["lm_head.weight"],
               "output_norm.weight": src["model.norm.weight"]}
    for l in range(2):
        p = L.format(l)
        sources[f"blk.{l}.attn_q.weight"] = to_interleaved(src[p + "self_attn.q_proj.weight"], 8)
        sources[f"blk.{l}.attn_k.weight"] = to_interleaved(src[p + "self_attn.k_proj.weight"], 4)
        sources[f"blk.{l}.attn_v.weight"] = src[p + "self_attn.v_proj.weight"]
        sources[f"blk.{l}.attn_output.weight"] = src[p + "self_attn.o_proj.weight"]
        sources[f"blk.{l}.attn_norm.weight"] = src[p + "input_layernorm.weight"]
        sources[f"blk.{l}.ffn_norm.weight"] = src[p + "post_attention_layernorm.weight"]
        sources[f"blk.{l}.ffn_gate_inp.weight"] = src[p + "block_sparse_moe.gate.weight"]
        for role, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            sources[f"blk.{l}.ffn_{role}_exps.weight"] = np.stack(
                [src[p + f"block_sparse_moe.experts.{e}.{w}.weight"] for e in range(8)])

    # Relative RMS error bounds per block type: 1.5x what the Swift QuantizeTests measured.
    bound = {"F32": 0.0, "Q8_0": 0.0057, "Q6_K": 0.02, "Q5_K": 0.042, "Q4_K": 0.082, "Q4_0": 0.098}
    for mix in ["f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]:
        path = f"{work}/model.{mix}.gguf"
        subprocess.run([shoal, "quantize", "--model", model, "--type", mix, "--out", path], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = GGUFReader(path)
        meta = {f.name: f for f in r.fields.values()}

        def scalar(key):
            f = meta[key]
            return f.parts[f.data[0]].tobytes().decode() if f.types[0].name == "STRING" else f.parts[f.data[0]][0]

        check(scalar("general.architecture") == "llama", f"{mix}: architecture")
        check(scalar("llama.expert_count") == 8 and scalar("llama.expert_used_count") == 2, f"{mix}: experts")
        check(scalar("llama.block_count") == 2 and scalar("llama.embedding_length") == 256, f"{mix}: shape")
        check(len(meta["tokenizer.ggml.tokens"].data) == 512, f"{mix}: vocabulary")
        check(scalar("tokenizer.ggml.model") == "llama", f"{mix}: tokenizer model")
        names = {t.name for t in r.tensors}
        check(names == set(sources), f"{mix}: tensor names {sorted(names ^ set(sources))}")
        worst = {}
        for t in r.tensors:
            values = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(sources[t.name].shape)
            ref = sources[t.name].astype(np.float64)
            rel = float(np.sqrt(((values - ref) ** 2).sum() / (ref ** 2).sum()))
            kind = t.tensor_type.name
            worst[kind] = max(worst.get(kind, 0.0), rel)
            check(rel <= bound[kind], f"{mix}: {t.name} as {kind}: relative RMS error {rel:.4g} > {bound[kind]}")
        print(f"{mix}: {len(r.tensors)} tensors read by gguf-py; worst relative RMS error per type "
              + ", ".join(f"{k} {v:.4f}" for k, v in sorted(worst.items())))

    # The Q4_K_M file cut into splits of at most 8 tensors by gguf-py's writer, its metadata
    # copied field by field (as gguf-py's gguf_new_metadata.py copies it).
    whole = f"{work}/model.q4_k_m.gguf"
    r = GGUFReader(whole)
    writer = GGUFWriter(f"{work}/split.gguf", "llama", split_max_tensors=8)
    for field in r.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in r.tensors:
        writer.write_tensor_data(t.data)
    writer.close()
    splits = sorted(glob.glob(f"{work}/split-*-of-*.gguf"))
    check(len(splits) == 3, f"gguf-py wrote {len(splits)} splits, expected 3")

    def logits(model, *extra):
        out = f"{work}/logits.safetensors"
        run = subprocess.run([shoal, "logits", "--model", model, "--ids", "1,15,27,300,42,7", "--out", out,
                              *extra], capture_output=True, text=True)
        if run.returncode != 0:
            return None, run.stderr
        with open(out, "rb") as f:
            return f.read(), run.stderr

    expected, _ = logits(whole)
    got, err = logits(splits[0])
    check(expected is not None and got == expected, f"logits from the splits differ from the whole file's: {err}")
    # Two workers on the splits, each mapping its experts' slices of whichever split holds them.
    workers = serve.start_workers(shoal, splits[0], ["0-3", "4-7"])
    got, err = logits(splits[0], "--workers", ",".join(workers), "--wire-dtype", "f32")
    check(got == expected, f"logits through two workers on the splits differ from one process's: {err}")
    refused, err = logits(splits[1])
    check(refused is None and "split 2 of 3" in err and os.path.basename(splits[0]) in err,
          f"a later split given first: {err.strip()!r}")
    os.rename(splits[2], splits[2] + ".away")
    refused, err = logits(splits[0])
    check(refused is None and os.path.basename(splits[2]) in err and "missing" in err,
          f"a missing split: {err.strip()!r}")
    print(f"splits: {len(splits)} files from gguf-py's writer, logits identical to the whole file's in one "
          "process and through two workers; a later split and a missing split refused")
finally:
    shutil.rmtree(work, ignore_errors=True)

print(f"test_gguf: {len(failures)} failures" if failures else "test_gguf: 6 mixes read back by gguf-py, splits read")
sys.exit(1 if failures else 0)
