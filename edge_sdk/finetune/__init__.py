"""Host-side fine-tuning (`edge-sdk finetune`): PEFT on PyTorch, one process or many (DDP, FSDP2, DeepSpeed ZeRO),
the device's task plugins and data formats, a PEFT adapter folder out that `edge-sdk build --adapter-from` turns
into a bundle. Needs the host extra (torch); never imported by the device runtime."""
