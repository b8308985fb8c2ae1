"""W ranks as W threads of this process, for the tests of methods' cross-rank code paths
(tests/test_moco.py, tests/test_joint_embedding.py) without a process group: `gather`
concatenates every thread's tensor in rank order (as torch.distributed.all_gather does) and
`all_reduce` sums in place in rank order (as torch.distributed.all_reduce). CPU autograd runs a
backward on the thread that calls it, so backward all-reduces work too. The real 2-process gloo
run is tests/test_distributed.py."""

import threading

import torch


class ThreadRanks:
    def __init__(self, w: int):
        self.w = w
        self.local = threading.local()
        self.barrier = threading.Barrier(w)
        self.slots = [None] * w

    def rank(self) -> int:
        return self.local.rank

    def world_size(self) -> int:
        return self.w

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        self.slots[self.rank()] = x.detach().clone()
        self.barrier.wait()
        out = torch.cat(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def all_reduce(self, t: torch.Tensor) -> None:
        self.slots[self.rank()] = t.detach().clone()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].clone())
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        t.copy_(total)

    def run(self, fn):
        """fn(rank) on every rank's thread; their results in rank order (the first error raised)."""
        results, errors = [None] * self.w, []

        def body(r):
            self.local.rank = r
            try:
                results[r] = fn(r)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.w)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results
