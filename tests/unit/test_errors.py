from xtune.errors import XtuneDataError


def test_one_line_from_a_dataloader_worker():
    # what torch's ExceptionWrapper.reraise() builds from a worker's XtuneDataError
    message = (
        "Caught XtuneDataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise XtuneDataError(...)\n'
        "xtune.errors.XtuneDataError: cannot read image /data/cat/1.png (UnidentifiedImageError: bad); "
        "replace or delete the file\n"
    )
    assert XtuneDataError(message).one_line() == (
        "cannot read image /data/cat/1.png (UnidentifiedImageError: bad); replace or delete the file"
    )


def test_one_line_joins_lines():
    assert XtuneDataError("a\n  b").one_line() == "a b"
