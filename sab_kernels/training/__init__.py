"""sab-train, one job per module (each imports only those listed before it):

    checkpoint.py   what a checkpoint holds, writing and reading it, the resume rules
    records.py      metrics.csv and curve.png
    evaluation.py   metrics on a task's held-out data (test, and validation where the task has one)
    model_file.py   model.pt: a trained model anyone can load safely (weights_only) and re-evaluate
    args.py         the parser and every argument check (before any work)
    loop.py         run(args): the training loop, gradient clipping, distributed set-up
    cli.py          main(): parse, run, print
    demo.py         run_demo(): SAB against truncated BPTT on a small copy task (make demo)

Entry points: `sab-train` and `python -m sab_kernels.train` (sab_kernels/train.py), `python -m sab_kernels.evaluate`,
`python -m sab_kernels.model_file RUN_DIR`.
"""
