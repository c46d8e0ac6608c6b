"""``--push-to-hub REPO_ID``: upload an exported model folder to the Hugging Face Hub.

Private by default; the token comes from the environment (``HF_TOKEN``) or ``hf auth login``.
What cannot work (offline, no token) is refused before training starts, not after it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import PipelineError

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+|[\w.-]+")


def check_can_push(repo_id: str) -> None:
    """Refuse a push that cannot happen, with the fix, before any work is done."""
    if not REPO_ID.fullmatch(repo_id):
        raise PipelineError(f"--push-to-hub {repo_id!r} is not a Hub repository id; use NAME or USER/NAME")
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise PipelineError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it on a "
                            f"machine with internet, or drop --push-to-hub and upload later with 'hf upload {repo_id} DIR'")
    if not get_token():
        raise PipelineError(f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN (a write token) or run "
                            f"'hf auth login' first")
    try:  # the network and the token, now rather than after the whole run
        from huggingface_hub import HfApi

        HfApi().whoami()
    except Exception as err:  # as in push(): the HTTP layer's errors share no base
        raise PipelineError(f"--push-to-hub {repo_id}: {_why(err)}; fix that before training, or drop --push-to-hub "
                            f"and upload later with 'hf upload {repo_id} DIR'") from None


def push(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create the repository if needed (private unless told otherwise) and upload ``folder``."""
    check_can_push(repo_id)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model")
    except Exception as err:  # the HTTP layer's errors (httpx, requests, HfHubHTTPError) share no base
        raise PipelineError(f"--push-to-hub {repo_id}: {_why(err)}; the model is kept in {folder}: "
                            f"upload it later with 'hf upload {repo_id} {folder}'") from None
    return str(url)


def _why(err: Exception) -> str:
    """What went wrong talking to the Hub, in a few words."""
    from huggingface_hub import constants

    status = getattr(getattr(err, "response", None), "status_code", None)
    first = (str(err).splitlines() or [""])[0]
    return ({401: "the token is not valid", 403: "the token cannot write to this repository"}.get(status)
            or (f"the Hub answered {status} ({first})" if status else
                f"cannot reach {constants.ENDPOINT} ({type(err).__name__}: {first})"))
