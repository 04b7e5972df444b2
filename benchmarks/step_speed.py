"""Time one prompt-tuning step (forward + backward to the prompt) of the backbone.

python benchmarks/step_speed.py [--device cuda] [--batch 32 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from rayfed_bpt.models import PromptedViT, create_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    pv = PromptedViT(create_backbone()).to(args.device)
    print(
        f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else ''}"
        f"{torch.get_num_threads()} threads)"
    )
    for b in args.batch:
        x = torch.randn(b, 3, 32, 32, device=args.device)
        prompt = torch.zeros(
            b, args.prompt_len, pv.embed_dim, device=args.device, requires_grad=True
        )
        for i in range(args.steps + 3):
            if i == 3:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
            pv(x, prompt).sum().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / args.steps
        print(f"  batch {b:4d}: {dt * 1e3:8.2f} ms/step  {b / dt:10.0f} images/s")


if __name__ == "__main__":
    main()
