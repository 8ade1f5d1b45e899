from fixtures_clip import tiny_clip, tiny_clip_files  # noqa: F401
