import math

import pytest

from sslseg.report.curves import epoch_means, main, markdown

# A CSV log as Lightning's CSVLogger writes it: one row per logging call, blank where a key was not logged.
LOG = """epoch,step,lr,train/loss,train/mask_ratio,val/mIoU,val/mIoU_teacher
,9,0.02,,,,
0,9,,0.9,0.0,,
0,19,,0.7,0.25,,
0,20,,,,31.5,20.25
,29,0.01,,,,
,35,0.5,,,,
1,29,,0.5,0.5,,
1,39,,0.3,0.75,,
1,40,,,,42.0,40.0
2,40,,,,42.0,40.0
"""


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(LOG)
    return tmp_path


def test_each_key_is_averaged_over_the_rows_of_its_epoch(run_dir):
    means = epoch_means(run_dir / "csv" / "metrics.csv", ["train/loss", "train/mask_ratio", "val/mIoU_teacher"])
    assert list(means) == [0, 1, 2]
    assert means[0] == pytest.approx({"train/loss": 0.8, "train/mask_ratio": 0.125, "val/mIoU_teacher": 20.25})
    assert means[1] == pytest.approx({"train/loss": 0.4, "train/mask_ratio": 0.625, "val/mIoU_teacher": 40.0})
    assert math.isnan(means[2]["train/loss"])  # the evaluation after training: no train rows
    lr = epoch_means(run_dir / "csv" / "metrics.csv", ["lr"])  # by step (step 35: no row to place it)
    assert lr[0]["lr"] == pytest.approx(0.02) and lr[1]["lr"] == pytest.approx(0.01)


def test_the_table_has_a_line_per_epoch_and_blanks_where_nothing_was_logged(run_dir, capsys):
    main([str(run_dir)])  # the default keys this log has, and the second network's mIoU
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| epoch | train/loss | train/mask_ratio | val/mIoU | val/mIoU_teacher |"
    assert lines[2:] == ["| 0 | 0.8 | 0.125 | 31.50 | 20.25 |", "| 1 | 0.4 | 0.625 | 42.00 | 40.00 |",
                         "| 2 |  |  | 42.00 | 40.00 |"]
    assert markdown({}, ["val/mIoU"]).count("\n") == 1  # header and rule only


@pytest.mark.parametrize("argv, message", [
    (["--keys", "val/mIoU", "train/loss_s"], "no column train/loss_s"),
    (["--keys", "train/loss"], "line 4: could not convert"),
])
def test_a_bad_key_or_value_is_one_line_naming_the_file(run_dir, capsys, argv, message):
    log = run_dir / "csv" / "metrics.csv"
    log.write_text(LOG.replace("0,19,,0.7", "0,19,,n/a"))
    with pytest.raises(SystemExit) as exit_:
        main([str(run_dir), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {log}") and message in err


def test_a_run_without_a_csv_log_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: no CSV log (csv/metrics.csv); train with logger=csv\n"
