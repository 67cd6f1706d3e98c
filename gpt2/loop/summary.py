"""summary.json's figures: what the run has reached (from its Progress), then what it
ran on and with."""
import math

from gpt2.budget import batch_size, extra_budget
from lib import optim, runtime


def results(p, status: str, error: str = None) -> dict:
    """What the run has reached, from its Progress."""
    return {
        "status": status,
        "error": error,
        "iters": p.iter,
        "tokens_seen": p.tokens_seen,
        "train_loss": p.last_eval.get("train_loss"),
        "val_loss": p.last_eval.get("val_loss"),
        "val_ppl": p.last_eval.get("val_ppl"),
        "val_acc": p.last_eval.get("val_acc"),
        "eval_iter": p.eval_iter,
        "best_val_ppl": math.exp(p.best_val_loss) if math.isfinite(p.best_val_loss) else None,
        **{k: (p.test or {}).get(k) for k in ("test_loss", "test_ppl", "test_acc",
                                               "test_tokens")},
        "train_time_s": p.train_time_s,
        "compile_s": p.compile_s,
        "steady_train_time_s": p.train_time_s - p.compile_s,
        # the steady-state rate: warm-up beyond steady steps left out (lib/steptime.py)
        "tokens_per_s": (p.tokens_seen / (p.train_time_s - p.compile_s)
                         if p.train_time_s > p.compile_s else None),
        "init_hash": p.init_hash,
        "data_hash": p.data_hash,
    }


def resources(trainer) -> dict:
    """What the run ran on and with: memory, sizes, the optimizer and pruning, the setup."""
    peak, peak_kind = runtime.peak_memory(trainer.device)
    params = sum(t.numel() for t in trainer.model.parameters())
    return {
        "peak_mem_bytes": peak,
        "peak_mem_kind": peak_kind,
        "param_count": params,
        "param_bytes": sum(t.numel() * t.element_size() for t in trainer.model.parameters()),
        "optimizer_state_bytes": optim.state_bytes(trainer.optimizer),
        "learning_rate": optim.peak_lr(trainer.cfg),
        "grad_clips": optim.gradient_clips(trainer.cfg),
        **optim.stats(trainer.optimizer),
        **trainer.pruner.stats(),
        "target_sparsity": trainer.cfg.TARGET_SPARSITY,
        "batch_size": batch_size(trainer.asked),
        "batch_size_used": trainer.batch_size,
        "gradient_accumulation_used": trainer.cfg.GRADIENT_ACCUMULATION,
        "batch_size_auto": trainer.batch_choice.how,
        "extra_budget": extra_budget(trainer.cfg)[2],
        "startup_s": trainer.startup_s,
        "device": str(trainer.device),
        "processes": trainer.ranks.world_size,
        "config_hash": trainer.cfg.hash,
    }
