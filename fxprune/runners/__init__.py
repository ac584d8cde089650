"""The ways in: the command line, zoo runs, the torch.compile backend, export, model ids and weights files, the demo."""
