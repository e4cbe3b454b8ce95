"""Bare training-step throughput of the speedrun network at several widths on this machine
(random batch of 512, bf16 autocast, channels-last, Nesterov SGD): why `speedrun-cpu` uses 32/128/128.

    python benchmarks/speedrun_widths.py
"""

import time

import torch
import torch.nn.functional as F

from cnnlab.device import tune_cpu_allocator
from cnnlab.models.speedrun import SpeedrunNet


def main(batch: int = 512, steps: int = 8) -> None:
    tune_cpu_allocator()
    torch.manual_seed(0)
    for widths in [(64, 256, 256), (64, 192, 192), (64, 128, 256), (32, 128, 128)]:
        model = SpeedrunNet(10, widths).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                    nesterov=True, foreach=True)
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"widths {widths}: {steps * batch / (time.perf_counter() - start):.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
