"""The progress bar (tqdm): iterations, or seconds for a wall-clock budget, on the main
process only; it shows the last log window's loss and speed."""
from tqdm import tqdm


class ProgressBar:
    def __init__(self, budget, p, name: str, show: bool):
        self.by_iters = budget.total_iters is not None
        self.bar = tqdm(total=budget.total_iters if self.by_iters else round(budget.seconds),
                        initial=p.iter if self.by_iters else round(p.train_time_s),
                        unit="it" if self.by_iters else "s", dynamic_ncols=True, desc=name,
                        disable=None if show else True)

    def show(self, train_loss: float, tokens_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}",
                             refresh=False)

    def update(self, p) -> None:
        self.bar.update(1 if self.by_iters else round(p.train_time_s) - self.bar.n)

    def close(self) -> None:
        self.bar.close()
