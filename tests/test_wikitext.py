"""Every kind of wikitext markup: the prose survives, the markup does not (both cleaners)."""

import pytest

from pipeline.wikitext import clean_wikitext, is_redirect_text, remove_nested

MODES = ["hybrid", "parser"]
PROSE = "이순신은 조선 중기의 무신이다."


def text_of(wikitext, mode):
    return "\n".join(clean_wikitext(wikitext, mode))


CASES = {
    "nested templates and infobox": ("{{정보상자 사람\n| 이름 = 홍길동\n| 출생 = {{출생일|1545|4|28|{{작은|주}}}}\n}}\n" + PROSE,
                                     ["홍길동", "출생", "1545", "{", "}"]),
    "inline template": (f"이순신은{{{{lang|zh|李舜臣}}}} 조선 중기의 무신이다.", ["李舜臣", "lang"]),
    "parser function": ("{{#if:{{{a|}}}|숨은 글|다른 글}}" + PROSE, ["숨은", "다른 글", "#if"]),
    "ref with content": (f"이순신은 조선 중기의 무신이다.<ref name=\"a\">{{{{웹 인용|url=http://x.org|제목=출처 제목}}}}</ref>", ["출처", "ref", "http"]),
    "self-closing ref": ('이순신은 조선 중기의 무신이다.<ref name="a" />', ["ref", "name"]),
    "references tag": (PROSE + "\n<references />\n{{각주}}", ["references", "각주"]),
    "math and chem": (PROSE + " 공식 <math>E = mc^2</math> 이다.", ["mc^2", "math"]),
    "gallery": (PROSE + "\n<gallery>\n파일:A.jpg|사진 설명\n</gallery>", ["사진 설명", "gallery", "A.jpg"]),
    "syntaxhighlight": (PROSE + '\n<syntaxhighlight lang="python">print(1)</syntaxhighlight>', ["print"]),
    "html comment": ("이순신은 <!-- 숨은 주석 -->조선 중기의 무신이다.", ["주석", "<!--"]),
    "table": ('{| class="wikitable"\n! 머리 !! 칸\n|-\n| 표 내용 || 둘째\n|}\n' + PROSE, ["표 내용", "머리", "wikitable"]),
    "nested table": ("{|\n| 바깥\n{|\n| 안쪽 표\n|}\n|}\n" + PROSE, ["안쪽", "바깥"]),
    "file with caption and nested link": ("[[파일:Yi.jpg|섬네일|왼쪽|[[이순신]]의 초상 설명]]\n" + PROSE, ["초상", "섬네일", "Yi.jpg"]),
    "image english namespace": ("[[File:Yi.jpg|thumb|caption words]]" + PROSE, ["caption", "thumb"]),
    "category": (PROSE + "\n[[분류:조선의 무신]]\n[[Category:Korean admirals]]", ["분류", "Korean admirals"]),
    "interlanguage": (PROSE + "\n[[en:Yi Sun-sin]]\n[[ja:李舜臣]]", ["Yi Sun-sin", "李舜臣"]),
    "section headings": ("== 생애 ==\n" + PROSE + "\n=== 임진왜란 ===", ["생애", "임진왜란", "=="]),
    "lists": (PROSE + "\n* 목록 하나\n# 번호 목록\n: 들여쓰기\n; 정의", ["목록", "들여쓰기", "정의"]),
    "magic words": ("__NOTOC__\n" + PROSE + "\n__목차숨김__", ["NOTOC", "__"]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_markup_removed_prose_kept(case, mode):
    wikitext, gone = CASES[case]
    out = text_of(wikitext, mode)
    assert "조선 중기의 무신이다." in out, out
    for fragment in gone:
        assert fragment not in out, f"{fragment!r} left in {out!r}"


@pytest.mark.parametrize("mode", MODES)
def test_visible_text_of_links_and_formatting(mode):
    out = text_of("'''이순신'''은 [[조선]] 중기의 [[무신 (관직)|무신]]이다. ''난중일기''와 [https://example.org 외부 링크 제목]을 남겼다.", mode)
    assert out == "이순신은 조선 중기의 무신이다. 난중일기와 외부 링크 제목을 남겼다."


@pytest.mark.parametrize("mode", MODES)
def test_html_entities_and_tags(mode):
    out = text_of("이순신은&nbsp;조선 <span style=\"x\">중기의</span> 무신<br />이다 &amp; 장군.", mode)
    assert out == "이순신은 조선 중기의 무신 이다 & 장군."


def test_remove_nested_handles_depth_and_unclosed():
    assert remove_nested("a{{b{{c}}d}}e\n{|\n|x\n{{t}}\n|}\nf") == "ae\n\nf"
    assert remove_nested("a{{never closed") == "a"


def test_redirect_detection():
    assert is_redirect_text("#넘겨주기 [[이순신]]") and is_redirect_text("#REDIRECT [[X]]")
    assert is_redirect_text("  #redirect[[X]]") and not is_redirect_text("이순신 #넘겨주기")
