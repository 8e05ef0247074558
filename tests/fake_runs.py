"""Run records with hand-made curves, for the harness's metrics and report tests."""


def make_run(method, seed, losses, accs, seconds_per_epoch=2.0, batch_losses=None, pdt=None, diverged=False):
    """A run record with the given curves; epoch ``i`` ends at ``i * seconds_per_epoch`` seconds."""
    pdt = pdt or [None] * len(losses)
    epochs = [
        {
            "epoch": i + 1,
            "train_time": (i + 1) * seconds_per_epoch,
            "pdt_time": 0.5 if stats and stats["predicted"] else 0.0,
            "eval_time": 0.1,
            "train_loss": loss,
            "batch_loss": (batch_losses or losses)[i],
            "train_acc": acc,
            "val_loss": loss,
            "val_acc": acc,
            "lr": 0.1,
            "pdt": stats,
        }
        for i, (loss, acc, stats) in enumerate(zip(losses, accs, pdt))
    ]
    return {
        "task": "hand",
        "method": method,
        "seed": seed,
        "config": {"seed": seed, "method": method, "lr": 0.1},
        "epochs": epochs,
        "param_types": {"w": "Linear"},
        "overhead": {},
        "diverged": diverged,
    }
