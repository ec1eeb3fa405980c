"""Models: the zoo by name, feature taps and adapters by module path, torch.compile of a frozen teacher.

May import kdflow.errors and kdflow.config; never data, training or later rooms.
"""
