"""Source of the embedded sentiment set: short Korean movie reviews written for this project.

Each review joins an opener with an evaluative phrase; the label comes from the phrase
(1 positive, 0 negative). Train and eval use different openers, so a model must learn the
evaluative words rather than memorize whole sentences.
"""

OPENERS_TRAIN = ["이 영화는", "솔직히 말해서", "주말에 봤는데", "친구 추천으로 봤는데", "오랜만에 극장에서 봤는데",
                 "가족과 함께 봤는데", "기대 없이 봤는데", "두 시간 내내", "배우 때문에 봤는데", "예고편만 보고 골랐는데",
                 "원작을 읽고 봤는데", "평점을 믿고 봤는데"]
OPENERS_EVAL = ["어제 본 영화는", "혼자서 봤는데", "감독 이름만 보고 봤는데", "심야 상영으로 봤는데"]

POSITIVE = ["정말 재미있었어요", "최고의 작품입니다", "감동적이고 여운이 남네요", "배우들 연기가 훌륭했어요",
            "시간 가는 줄 몰랐다", "음악이 너무 아름다웠다", "다시 보고 싶은 명작", "스토리가 탄탄하고 좋았다",
            "웃기고 따뜻한 영화", "영상미가 정말 멋졌어요", "강력 추천합니다", "올해 본 영화 중 최고",
            "눈물이 날 만큼 감동", "연출이 세련되고 좋았다", "마지막 장면이 인상 깊었다", "완벽한 영화였어요",
            "배우들의 호흡이 좋았다", "기대 이상으로 훌륭했다", "가슴이 벅차오르는 영화", "대사 하나하나가 좋았다"]
NEGATIVE = ["정말 지루했어요", "시간이 아까웠다", "최악의 영화입니다", "연기가 어색하고 별로였다",
            "스토리가 엉성하고 뻔했다", "돈 주고 보기 아깝다", "중간에 잠이 들었다", "너무 실망스러웠어요",
            "다시는 보고 싶지 않다", "결말이 허무했다", "억지 감동이 불편했다", "보는 내내 짜증이 났다",
            "추천하지 않습니다", "음악도 연출도 엉망", "개연성이 하나도 없다", "배우가 아까운 영화",
            "유치하고 재미없었다", "기대 이하의 졸작", "지루해서 나가고 싶었다", "전개가 너무 느리고 답답했다"]


def rows(openers):
    """(text, label) for every opener x phrase."""
    out = []
    for i, opener in enumerate(openers):
        for j, phrase in enumerate(POSITIVE + NEGATIVE):
            out.append((f"{opener} {phrase}", 1 if j < len(POSITIVE) else 0))
    return out
