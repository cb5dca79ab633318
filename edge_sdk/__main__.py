"""`python -m edge_sdk` is the `edge-sdk` command; torchrun starts it this way: `torchrun ... -m edge_sdk finetune`."""

from edge_sdk.cli.main import main
from edge_sdk.finetune.rank_exit import exit_rank, started_by_torchrun

if started_by_torchrun():
    try:
        main()
    except SystemExit as finished:   # click ends every command this way
        exit_rank(finished.code)
    exit_rank(0)
else:
    main()
