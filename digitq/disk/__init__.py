"""Everything under ``DIGITQ_DATA_DIR``, and reading files safely.

- ``records``: what jobs and trainings share (ids, headers, JSON files, states);
- ``jobs``: a job's manifest, its committed results and the merged CSV; ``csvfile``: that CSV's format;
- ``training_requests``: a training's request, run, progress and outcome, and its claim;
- ``scores``: the content-hash index of incremental scans;
- ``storage``: atomic writes and the data dir's id; ``files``: reading regular files only; ``paths``: file names
  as text.
"""
