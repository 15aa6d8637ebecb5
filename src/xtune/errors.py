"""The errors a user can fix. The CLI prints them as one line and exits with code 2."""


class XtuneError(Exception):
    """A problem with the user's input: the message says what is wrong and what to type instead."""

    exit_code = 2

    def one_line(self) -> str:
        """The message as one line, also when it crossed a DataLoader worker.

        PyTorch re-raises a worker's exception in the main process with the worker's whole
        traceback in the message; its last line holds the original message.
        """
        text = str(self)
        if "Original Traceback" in text:
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split(": ", 1)[1] if last.startswith(("xtune.", "Xtune")) else last
        return " ".join(text.split())


class XtuneConfigError(XtuneError):
    """A config value, command-line override, path, checkpoint or hardware request is wrong."""


class XtuneDataError(XtuneError):
    """The data cannot be used: missing or empty root, mismatched classes, unreadable image."""


class XtuneInterrupted(XtuneError):
    """SIGTERM / preemption: a checkpoint was saved; the same command continues the run."""

    exit_code = 143
