from stream.report import write_section


def test_a_section_is_replaced_in_place_and_the_others_kept(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section(path, "## A\n\nfirst\n")
    write_section(path, "## B\n\n### sub\nb body")
    write_section(path, "## A\n\nsecond")
    text = path.read_text()
    assert text == "# Benchmark results\n\n## A\n\nsecond\n\n## B\n\n### sub\nb body\n"
