"""`lora-kit info / convert / merge / resize`: command modules over lora_kit.adapters' file formats."""
