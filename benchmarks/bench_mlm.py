"""MLM-Filter throughput: samples/s per metric on CPU with the tiny twin, and on GPU at real size.

    python benchmarks/bench_mlm.py                 # CPU: tiny model through the Beam handler
    python benchmarks/bench_mlm.py --gpu           # + real-size architecture, random weights, CUDA

The GPU part builds transformers' LlavaForConditionalGeneration at the published sizes
(Qwen2.5-1.5B LLM, SigLIP so400m-patch14-384 tower: 729 image tokens, mlp2x_gelu
projector) with random weights, and times what the handler's ``score_texts`` does per
batch: SigLIP preprocessing excluded, vision tower + prefill + greedy decoding of
``max_new_tokens`` tokens, left-padded batches. Prompt lengths are the reference's: the
instruction texts' Qwen token counts are estimated at 4 characters per token (the real
tokenizer is not available offline). It needs only torch and transformers, so it also
runs where Beam is not installed. vLLM is timed when importable (not here).
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                         num_attention_heads=16, image_size=384, patch_size=14)


def _emit(**kw):
    print(json.dumps(kw, sort_keys=True), flush=True)


def _jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (256 + i % 64, 192), ((37 * i) % 256, (91 * i) % 256, 60)).save(buf, "JPEG")
    return buf.getvalue()


def bench_cpu(n: int, batch_size: int, threads: int) -> None:
    import torch

    from beam_filter.devtools.tiny_models import write_tiny_mlm
    from beam_filter.models import mlm_prompts as P
    from beam_filter.models.mlm_filter import MLMFilterModelHandler

    torch.set_num_threads(threads)
    d = write_tiny_mlm(os.path.join(tempfile.mkdtemp(), "tiny"))
    elements = [(_jpeg(i), f"a photo number {i} of a red car parked near the sea at night") for i in range(n)]
    for metric in P.METRICS:
        h = MLMFilterModelHandler(d, metrics=[metric], device="cpu", batch_size=batch_size)
        model = h.load_model()
        h.run_inference(elements[:batch_size], model)            # warm-up
        t = time.perf_counter()
        for i in range(0, n, batch_size):
            h.run_inference(elements[i:i + batch_size], model)
        dt = time.perf_counter() - t
        _emit(bench="mlm_cpu_tiny", metric=metric, samples=n, batch_size=batch_size, threads=threads,
              samples_per_s=round(n / dt, 2), prompt_tokens=len(model.prompt_ids("x", metric)))


def _prompt_lengths() -> dict:
    """Approximate Qwen token counts of each metric's prompt text (4 chars per token), + a 12-word caption."""
    from beam_filter.models import mlm_prompts as P

    caption = "a photo of a red car parked on the street near a tall building"
    return {m: len(P.render_prompt(caption, m)) // 4 + 1 for m in P.METRICS}


def bench_gpu(batch_sizes, precisions, max_new_tokens: int, iters: int) -> None:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    if not torch.cuda.is_available():
        _emit(bench="mlm_gpu", skipped="no CUDA device")
        return
    lengths = _prompt_lengths()
    image_tokens = (SIGLIP_SO400M_384["image_size"] // SIGLIP_SO400M_384["patch_size"]) ** 2
    image_token_id = 151665
    cfg = LlavaConfig(vision_config=SiglipVisionConfig(**SIGLIP_SO400M_384),
                      text_config=Qwen2Config(**QWEN25_15B), image_token_index=image_token_id,
                      image_seq_length=image_tokens, vision_feature_select_strategy="full",
                      vision_feature_layer=-2, tie_word_embeddings=True)
    for precision in precisions:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
        gen = torch.Generator(device="cpu").manual_seed(0)
        for metric, text_len in lengths.items():
            for bs in batch_sizes:
                # ragged captions: +-8 tokens, left padded as the handler does
                rows = []
                for b in range(bs):
                    L = text_len + int(torch.randint(-8, 9, (1,), generator=gen))
                    ids = torch.randint(0, 151000, (L,), generator=gen).tolist()
                    rows.append(ids[:10] + [image_token_id] * image_tokens + ids[10:])
                width = max(map(len, rows))
                input_ids = torch.full((bs, width), 151643, dtype=torch.long)
                mask = torch.zeros((bs, width), dtype=torch.long)
                for i, r in enumerate(rows):
                    input_ids[i, width - len(r):] = torch.tensor(r)
                    mask[i, width - len(r):] = 1
                input_ids, mask = input_ids.cuda(), mask.cuda()
                pixels = torch.randn(bs, 3, 384, 384, device="cuda", dtype=dtype)

                def step():
                    with torch.inference_mode():
                        return model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels,
                                              do_sample=False, max_new_tokens=max_new_tokens,
                                              min_new_tokens=max_new_tokens, pad_token_id=151643,
                                              temperature=None, top_p=None, top_k=None)
                step()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(iters):
                    step()
                torch.cuda.synchronize()
                dt = (time.perf_counter() - t) / iters
                prompt_tokens = int(mask.sum())
                _emit(bench="mlm_gpu_transformers", device=torch.cuda.get_device_name(0), precision=precision,
                      metric=metric, batch_size=bs, max_new_tokens=max_new_tokens,
                      prompt_tokens_per_sample=round(prompt_tokens / bs, 1),
                      samples_per_s=round(bs / dt, 1),
                      prefill_tokens_per_s=round(prompt_tokens / dt),
                      generated_tokens_per_s=round(bs * max_new_tokens / dt),
                      peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        del model
        torch.cuda.empty_cache()
    try:
        import vllm  # noqa: F401
    except ImportError:
        _emit(bench="mlm_gpu_vllm", skipped="vllm not installed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also time the real-size architecture on CUDA")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU part (no Beam needed)")
    ap.add_argument("--gpu-batch-sizes", default="16,64")
    ap.add_argument("--precisions", default="fp16,bf16")
    ap.add_argument("--max-new-tokens", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args(argv)
    if not a.gpu_only:
        bench_cpu(a.samples, a.batch_size, a.threads)
    if a.gpu or a.gpu_only:
        bench_gpu([int(b) for b in a.gpu_batch_sizes.split(",")], a.precisions.split(","),
                  a.max_new_tokens, a.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
