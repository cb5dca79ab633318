"""`python -m edge_sdk` is the `edge-sdk` command; torchrun starts it this way: `torchrun ... -m edge_sdk finetune`."""

from edge_sdk.cli.main import main

main()
