import pytest

from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import CorpusError


def test_unknown_corpus_lists_valid_names(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus_name='NoSuch' is unknown: valid names are PubMed, Textbooks, "
                                          r"StatPearls, Wikipedia, MedText, MedCorp, sample"):
        resolve_corpus("NoSuch", tmp_path)


def test_known_corpus_without_db_dir_says_where_corpora_come_from():
    with pytest.raises(CorpusError, match=r"db_dir=None.*MedRAG/pubmed.*medret corpus download"):
        resolve_corpus("PubMed", None)


def test_missing_db_dir(tmp_path):
    with pytest.raises(CorpusError, match=r"db_dir=.*does not exist"):
        resolve_corpus("PubMed", tmp_path / "nope")


def test_missing_chunk_files(tmp_path):
    (tmp_path / "pubmed" / "chunk").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"no \*\.jsonl chunk files in .*pubmed/chunk.*medret corpus download"):
        resolve_corpus("pubmed", tmp_path)
    with pytest.raises(CorpusError, match=r"folder .*textbooks' does not exist"):
        resolve_corpus("MedText", tmp_path)


def test_git_lfs_pointer_is_named(tmp_path):
    chunk = tmp_path / "textbooks" / "chunk"
    chunk.mkdir(parents=True)
    (chunk / "Anatomy_Gray.jsonl").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    corpus = resolve_corpus("Textbooks", tmp_path)
    with pytest.raises(CorpusError, match=r"Anatomy_Gray.jsonl is a git-lfs pointer file.*git lfs pull"):
        open_corpus_store(corpus)


def test_snippet_without_content(tmp_path):
    chunk = tmp_path / "c" / "chunk"
    chunk.mkdir(parents=True)
    (chunk / "f.jsonl").write_text('{"id": "f_0", "text": "no content field"}\n')
    with pytest.raises(CorpusError, match=r'f.jsonl:1 has neither "content" nor "contents"'):
        open_corpus_store(resolve_corpus(str(tmp_path / "c"), None))
