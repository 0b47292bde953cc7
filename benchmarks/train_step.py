"""How much faster one training step gets with bf16 autocast and channels_last, on this machine.

    python benchmarks/train_step.py                 # ResNet-18, batch 4, 224 px, on the CPU
    python benchmarks/train_step.py --batch-size 16

The ceiling for the fast settings in benchmarks/compare.py: two copies of the network (fp32, and
bf16 + channels_last) take turns, step by step, in one process, so a slow spell of a shared machine
hits both alike; it prints the median of the per-pair ratios and their quartiles, for training
steps (forward, backward, SGD) and for evaluation forwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from tl.core.provenance import cpu_features, cpu_model


def steps(fast: bool, batch_size: int, image_size: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """A training step and an evaluation forward on a fixed random batch."""
    memory_format = torch.channels_last if fast else torch.contiguous_format
    network = torchvision.models.resnet18(num_classes=10).to(memory_format=memory_format)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,))

    def train() -> None:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = nn.functional.cross_entropy(network(images), labels)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate() -> None:
        network.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            network(images)
        network.train()

    return train, evaluate


def seconds(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="the tutorial's 4")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{cpu_model()} ({' '.join(cpu_features()) or 'no AVX'}), torch {torch.__version__}")
    (fp32_train, fp32_eval), (fast_train, fast_eval) = (steps(fast, args.batch_size, args.image_size)
                                                        for fast in (False, True))  # fmt: skip
    for step in (fp32_train, fast_train, fp32_eval, fast_eval):  # warm-up: oneDNN builds its kernels
        step()
        step()
    for name, fp32, fast in (("training step", fp32_train, fast_train), ("evaluation", fp32_eval, fast_eval)):
        pairs = [(seconds(fp32), seconds(fast)) for _ in range(args.pairs)]
        ratios = [slow / quick for slow, quick in pairs]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"{name}: fp32 {1000 * statistics.median(s for s, _ in pairs):.0f} ms, bf16 + channels_last "
            f"{1000 * statistics.median(q for _, q in pairs):.0f} ms (medians); speed-up per pair: median "
            f"{median:.2f}x, quartiles {q1:.2f}-{q3:.2f}x (batch {args.batch_size}, {args.image_size} px, "
            f"{torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
