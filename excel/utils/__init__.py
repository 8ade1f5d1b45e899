"""Helpers every floor may use: devices and processes, logging, allocator, argmax, pictures of labels."""
