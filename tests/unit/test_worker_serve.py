"""Which queues `fervid worker --queues ...` serves."""

from __future__ import annotations

from worker.serve import with_side_queues


def test_each_job_queue_brings_its_webhook_and_stills_queues_once() -> None:
    assert with_side_queues("cpu") == ["cpu", "cpu.webhooks", "cpu.stills"]
    assert with_side_queues("cpu, gpu,cpu") == ["cpu", "cpu.webhooks", "cpu.stills", "gpu", "gpu.webhooks",
                                                "gpu.stills"]
    # a side queue named alone still brings the rest of its job queue's side queues, never the job queue itself
    assert with_side_queues("cpu.stills") == ["cpu.stills", "cpu.webhooks"]
