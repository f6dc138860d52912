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
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

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
    bound = {"F32": 0.0, "Q8_0": 0.0057, "Q6_K": 0.02, "Q5_K": 0.042, "Q4_K": 0.082, "Q4_0": 0.098,
             "Q5_1": 0.044, "Q5_0": 0.047, "Q4_1": 0.091, "Q3_K": 0.19, "Q2_K": 0.35}
    # The 32-weight types' blocks must be ggml's reference quantizer's, byte for byte: gguf-py's
    # quantize() is a numpy port of quantize_row_q4_1_ref and its kin.
    reference_quantizer = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    for mix in ["f32", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_1", "q5_0", "q4_k_m", "q4_k_s", "q4_1", "q4_0", "q3_k_l",
                "q3_k_m", "q3_k_s", "q2_k"]:
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
            if kind in reference_quantizer:
                blocks = quantize(sources[t.name].astype(np.float32), t.tensor_type)
                check(np.array_equal(blocks.reshape(-1), np.asarray(t.data).reshape(-1)),
                      f"{mix}: {t.name} as {kind}: blocks differ from gguf-py's quantize()")
        print(f"{mix}: {len(r.tensors)} tensors read by gguf-py; worst relative RMS error per type "
              + ", ".join(f"{k} {v:.4f}" for k, v in sorted(worst.items())))

    def copy_metadata(reader, writer):
        """Every field but the ones the writer makes itself, as gguf-py's gguf_new_metadata.py copies them."""
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            writer.add_key_value(field.name, field.contents(), kind,
                                 sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)

    def logits(model, *extra):
        out = f"{work}/logits.safetensors"
        run = subprocess.run([shoal, "logits", "--model", model, "--ids", "1,15,27,300,42,7", "--out", out,
                              *extra], capture_output=True, text=True)
        if run.returncode != 0:
            return None, run.stderr
        with open(out, "rb") as f:
            return f.read(), run.stderr

    # Every block type Shoal reads, from bytes it did not write: each weight tensor of the f32
    # file as blocks of the type, and a twin file of gguf-py's dequantization of those blocks as
    # F32. Shoal's kernels compute exactly the float32 function of the dequantized weights, so
    # the two give the same logits byte for byte only if Shoal dequantizes every block as gguf-py
    # (ggml's dequantize_row_*) does; through two workers on the quantized file too. gguf-py has no quantizer for the
    # K-quants: their blocks are random bytes with binary16 scales that keep activations of
    # order 1 (a weight is about d·scale·q: Q2_K 11·d on average, Q6_K 1024·d), which exercises
    # every bit of every field. The 32-weight types' blocks are gguf-py's quantize().
    rng = np.random.default_rng(7)
    f32 = GGUFReader(f"{work}/model.f32.gguf")
    # Where each K-quant keeps its binary16 d (and dmin), and the average |weight| per unit of it.
    scale_at = {"Q2_K": ((80, 11.0), (82, 40.0)), "Q3_K": ((108, 32.0),), "Q4_K": ((0, 232.0), (2, 900.0)),
                "Q5_K": ((0, 480.0), (2, 1800.0)), "Q6_K": ((208, 1024.0),)}
    for kind in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]:
        qtype = GGMLQuantizationType[kind]
        quantized, twin = f"{work}/types.{kind}.gguf", f"{work}/types.{kind}.f32.gguf"
        wq, wf = GGUFWriter(quantized, "llama"), GGUFWriter(twin, "llama")
        copy_metadata(f32, wq)
        copy_metadata(f32, wf)
        for t in f32.tensors:
            data = np.asarray(t.data)
            if data.ndim < 2 or t.name.endswith("ffn_gate_inp.weight"):  # norms and routers stay float
                wq.add_tensor(t.name, data)
                wf.add_tensor(t.name, data)
                continue
            cols = data.shape[-1]
            if kind in scale_at:
                block_bytes = GGML_QUANT_SIZES[qtype][1]
                blocks = rng.integers(0, 256, size=(data.size // 256, block_bytes), dtype=np.uint8)
                for offset, per_weight in scale_at[kind]:
                    d = (rng.uniform(0.5, 1.5, size=len(blocks)) / (per_weight * np.sqrt(cols))).astype(np.float16)
                    blocks[:, offset:offset + 2] = d.view(np.uint8).reshape(-1, 2)
                blocks = blocks.reshape(*data.shape[:-1], cols // 256 * block_bytes)
            else:
                blocks = quantize(data.astype(np.float32), qtype)
            wq.add_tensor(t.name, blocks, raw_dtype=qtype)
            wf.add_tensor(t.name, dequantize(blocks, qtype).astype(np.float32).reshape(data.shape))
        for w in (wq, wf):
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        expected, err = logits(twin)
        got, err = logits(quantized)
        check(expected is not None and got == expected,
              f"{kind}: logits differ from those of gguf-py's dequantization of the same blocks: {err}")
        with open(f"{work}/expected.safetensors", "wb") as f:
            f.write(expected or b"")
        values = np.concatenate([v.reshape(-1) for v in safetensors(f"{work}/expected.safetensors").values()]) \
            if expected else np.zeros(1)
        # measured standard deviations 1.39 (Q3_K, Q6_K) to 5.9 (Q5_K); weights read as zeros give 0
        check(np.isfinite(values).all() and values.std() > 0.5,
              f"{kind}: logits of the dequantized file are not finite and varied")
        workers = serve.start_workers(shoal, quantized, ["0-3", "4-7"])
        got, err = logits(quantized, "--workers", ",".join(workers), "--wire-dtype", "f32")
        check(got == expected, f"{kind}: logits through two workers differ: {err}")
        print(f"{kind}: logits identical to gguf-py's dequantization stored as F32, in one process and through "
              "two workers")

    # The Q4_K_M file cut into splits of at most 8 tensors by gguf-py's writer, its metadata
    # copied field by field.
    whole = f"{work}/model.q4_k_m.gguf"
    r = GGUFReader(whole)
    writer = GGUFWriter(f"{work}/split.gguf", "llama", split_max_tensors=8)
    copy_metadata(r, writer)
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

print(f"test_gguf: {len(failures)} failures" if failures
      else "test_gguf: 15 mixes read back by gguf-py, 10 block types read as gguf-py reads them, splits read")
sys.exit(1 if failures else 0)
