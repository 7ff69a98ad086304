"""What the notebooks' setup cells need: the accelerator check and the run folder."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import project
from helpers.devices import device_names
from helpers.runfolder import RunFolder, check_placement, check_root

# Where a Colab user's run folders go when they keep them on Google Drive.
DRIVE_FOLDER = "/content/drive/MyDrive/blood-cell-study"


def report_accelerator(is_colab: bool) -> None:
    """Print the devices TensorFlow sees, and how to get a GPU if it sees none.

    Returns nothing: it is the setup cell's last line, whose value a notebook would show again.
    """
    devices = device_names()
    message = "Devices: " + ", ".join(devices)
    if not any(name.startswith(("GPU", "TPU")) for name in devices):
        if is_colab:
            message += ("\nNo GPU: training will be slow. In Colab choose Runtime > Change "
                        "runtime type > T4 GPU (or better), then Runtime > Run all.")
        else:
            message += ("\nNo GPU: training runs on the CPU. The `cpu` profile is sized for "
                        "that (python -m helpers.study --profile cpu).")
    print(message)


def run_folder(run_dir: str | os.PathLike, use_google_drive: bool, is_colab: bool) -> RunFolder:
    """The run folder; on Colab with ``use_google_drive``, inside your Drive. Its place is
    checked (``check_placement``) but nothing is made: notebook 01 first checks where its
    data will be, and the first notebook that writes makes the folder under its lock.

    On Drive the folder survives a disconnect, and training resumes from its backups.
    """
    RunFolder(run_dir)  # refuses an empty name, which would make the repository a run folder
    if use_google_drive and is_colab:
        from google.colab import drive  # only exists in Colab

        drive.mount("/content/drive")
        path = Path(DRIVE_FOLDER) / Path(run_dir).name
    else:
        path = project.resolve(run_dir)
    check_root(path)
    check_placement(path)
    return RunFolder(path)
