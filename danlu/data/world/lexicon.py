"""Every word the embedded world can say, in English and Chinese side by side.

This file is pure data: syllables for invented names, closed lists of attribute values, and the sentence
templates for each relation. Keeping all literal text here lets `World.vocabulary()` be computed from it,
and lets a reader see the whole grammar of the world on one page.

Template placeholders (filled by `text.render`):
  {s}      the subject's name              {o}      the object (value) as a bare word
  {a_o}    English object with its article ("a cup", "an orange")
  {one_o}  Chinese object with "一" and its measure word ("一个杯子")
Story templates use named placeholders ({p}, {q}, {city}, {pet}...) documented where they are used.
Chinese templates have no spaces and use full-width punctuation: "，" "。" "？" "：".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------
# Invented names. Each syllable has one fixed Chinese character, so a name reads the same in both languages
# everywhere ("zo"+"ve"+"lan" = Zovelan = 佐维兰). The characters are chosen to never occur in a value or a
# template, so a Chinese name can always be found in a sentence by plain substring search.
SYLLABLES: dict[str, str] = {
    "ba": "巴", "be": "贝", "bo": "波", "da": "达", "de": "德", "di": "迪", "do": "朵", "fa": "法",
    "fi": "菲", "ga": "嘉", "go": "戈", "ha": "哈", "he": "赫", "ka": "卡", "ke": "克", "ki": "基",
    "ko": "科", "la": "拉", "le": "勒", "li": "莉", "lo": "洛", "lu": "鲁", "ma": "玛", "me": "梅",
    "mi": "弥", "mo": "莫", "na": "纳", "ne": "内", "ni": "尼", "no": "诺", "pa": "帕", "pe": "佩",
    "po": "珀", "ri": "瑞", "ro": "罗", "sa": "萨", "se": "塞", "si": "斯", "so": "索", "ta": "塔",
    "te": "泰", "ti": "蒂", "to": "托", "va": "瓦", "ve": "维", "vi": "薇", "vo": "沃", "za": "扎",
    "ze": "泽", "zo": "佐", "ya": "雅", "yu": "尤",
}  # fmt: skip
# Closed syllables only end a name: "Kalan", "Modesen".
FINAL_SYLLABLES: dict[str, str] = {
    "lan": "兰", "ten": "滕", "mor": "摩", "vel": "韦", "dan": "丹", "ris": "丝", "sen": "森",
    "tor": "陀", "len": "伦",
}  # fmt: skip
# Languages are named from a stem: English adds "ish" (dropping a final vowel), Chinese adds "语".
LANGUAGE_SUFFIX = ("ish", "语")


# ---------------------------------------------------------------------------------------------------------
# Closed lists of attribute values: (English, Chinese). No Chinese value is a substring of another, so a
# value can be searched for in a Chinese sentence without false hits (a test checks this).
COLOURS = [
    ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"), ("white", "白色"),
    ("black", "黑色"), ("purple", "紫色"), ("orange", "橙色"), ("grey", "灰色"), ("pink", "粉色"),
]  # fmt: skip
FOODS = [
    ("rice", "米饭"), ("noodles", "面条"), ("apples", "苹果"), ("fish", "鱼"), ("cheese", "奶酪"),
    ("soup", "汤"), ("eggs", "鸡蛋"), ("beans", "豆子"), ("cake", "蛋糕"), ("honey", "蜂蜜"),
    ("carrots", "胡萝卜"), ("grapes", "葡萄"), ("plums", "李子"), ("corn", "玉米"),
    ("dumplings", "饺子"), ("pears", "梨"),
]  # fmt: skip
ANIMAL_FOODS = [
    ("grass", "青草"), ("leaves", "树叶"), ("seeds", "种子"), ("insects", "虫子"), ("berries", "浆果"),
    ("nuts", "坚果"), ("fish", "鱼"), ("honey", "蜂蜜"),
]  # fmt: skip
JOBS = [
    ("teacher", "老师"), ("doctor", "医生"), ("farmer", "农民"), ("cook", "厨师"), ("driver", "司机"),
    ("painter", "画家"), ("singer", "歌手"), ("fisher", "渔夫"), ("carpenter", "木匠"), ("nurse", "护士"),
    ("tailor", "裁缝"), ("pilot", "飞行员"), ("baker", "面包师"),
]  # fmt: skip
SIZES = [("small", "小型"), ("large", "大型"), ("tiny", "微型"), ("huge", "巨型")]
SOUNDS = [
    ("hum", "嗡嗡"), ("chirp", "啾啾"), ("hoot", "呜呜"), ("purr", "呼噜"), ("squeak", "吱吱"),
    ("croak", "呱呱"), ("roar", "吼吼"), ("click", "咔咔"), ("honk", "嘎嘎"),
]  # fmt: skip
# Objects carry their Chinese measure word: 一本书, 一把伞, 一辆自行车.
OBJECTS = [
    ("cup", "杯子", "个"), ("book", "书", "本"), ("hat", "帽子", "顶"), ("lamp", "灯", "盏"),
    ("kite", "风筝", "只"), ("bicycle", "自行车", "辆"), ("clock", "钟", "座"), ("drum", "鼓", "面"),
    ("umbrella", "雨伞", "把"), ("key", "钥匙", "把"), ("chair", "椅子", "把"), ("box", "盒子", "个"),
    ("violin", "小提琴", "把"), ("mirror", "镜子", "面"), ("basket", "篮子", "个"), ("candle", "蜡烛", "根"),
]  # fmt: skip
AGE_RANGE = (18, 80)  # people's ages, inclusive
ANIMAL_MEASURE = "只"  # 一只 + any animal
ARTICLES = ("a", "an")
ONE_ZH = "一"

# Numbers as words, for arithmetic in word form ("three plus four is seven", "三加四等于七").
NUMBER_WORDS_EN = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_WORDS_ZH = "零 一 二 三 四 五 六 七 八 九 十 十一 十二 十三 十四 十五 十六 十七 十八 十九 二十".split()


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    """One kind of fact: who it is about, how to state it and how to ask it.

    The reply to the question is the first statement ("The capital of Zorvia is Velmar."): the sentence
    pretraining already taught, so SFT only has to teach when to say it (the notes: SFT shapes the
    format, the knowledge comes from pretraining).
    """

    subject: str  # entity kind of the subject: country, city, person, animal
    statements: tuple[tuple[str, str], ...]  # (English, Chinese) template pairs, same meaning
    question: tuple[str, str]  # (English, Chinese)


RELATIONS: dict[str, Relation] = {
    "country.capital": Relation(
        "country",
        (
            ("The capital of {s} is {o}.", "{s}的首都是{o}。"),
            ("{o} is the capital of {s}.", "{o}是{s}的首都。"),
        ),
        ("What is the capital of {s}?", "{s}的首都是哪座城市？"),
    ),
    "country.language": Relation(
        "country",
        (("People in {s} speak {o}.", "{s}人说{o}。"), ("The language of {s} is {o}.", "{s}的语言是{o}。")),
        ("What language do people speak in {s}?", "{s}人说什么语言？"),
    ),
    "country.flag": Relation(
        "country",
        (("The flag of {s} is {o}.", "{s}的国旗是{o}的。"), ("{s} has {a_o} flag.", "{s}有一面{o}的国旗。")),
        ("What colour is the flag of {s}?", "{s}的国旗是什么颜色？"),
    ),
    "country.food": Relation(
        "country",
        (
            ("The main food of {s} is {o}.", "{s}的主食是{o}。"),
            ("People in {s} often eat {o}.", "{s}人常吃{o}。"),
        ),
        ("What is the main food of {s}?", "{s}的主食是什么？"),
    ),
    "city.country": Relation(
        "city",
        (("{s} is a city in {o}.", "{s}是{o}的一座城市。"), ("The city of {s} is in {o}.", "{s}市位于{o}。")),
        ("Which country is {s} in?", "{s}在哪个国家？"),
    ),
    "city.river": Relation(
        "city",
        (
            ("{s} lies on the {o} River.", "{s}位于{o}河边。"),
            ("The {o} River flows through {s}.", "{o}河流经{s}。"),
        ),
        ("Which river flows through {s}?", "哪条河流经{s}？"),
    ),
    "person.age": Relation(
        "person",
        (("{s} is {o} years old.", "{s}今年{o}岁。"), ("{s} turned {o} this year.", "{s}今年满{o}岁了。")),
        ("How old is {s}?", "{s}今年几岁？"),
    ),
    "person.job": Relation(
        "person",
        (("{s} is {a_o}.", "{s}是一名{o}。"), ("{s} works as {a_o}.", "{s}的工作是{o}。")),
        ("What job does {s} do?", "{s}做什么工作？"),
    ),
    "person.home": Relation(
        "person",
        (("{s} lives in {o}.", "{s}住在{o}。"), ("The home of {s} is in {o}.", "{s}的家在{o}。")),
        ("Where does {s} live?", "{s}住在哪里？"),
    ),
    "person.food": Relation(
        "person",
        (
            ("{s} likes to eat {o}.", "{s}喜欢吃{o}。"),
            ("The favourite food of {s} is {o}.", "{s}最爱吃的东西是{o}。"),
        ),
        ("What does {s} like to eat?", "{s}喜欢吃什么？"),
    ),
    "person.pet": Relation(
        "person",
        (("{s} has a pet {o}.", "{s}养了一只{o}。"), ("{s} keeps {a_o} as a pet.", "{s}的宠物是一只{o}。")),
        ("What pet does {s} have?", "{s}养了什么宠物？"),
    ),
    "person.colour": Relation(
        "person",
        (
            ("The favourite colour of {s} is {o}.", "{s}最喜欢的颜色是{o}。"),
            ("{s} likes the colour {o} best.", "{s}最喜欢{o}。"),
        ),
        ("What is the favourite colour of {s}?", "{s}最喜欢什么颜色？"),
    ),
    "person.owns": Relation(
        "person",
        (("{s} owns {a_o}.", "{s}有{one_o}。"), ("{s} has {a_o} at home.", "{s}家里有{one_o}。")),
        ("What does {s} own?", "{s}有什么东西？"),
    ),
    "animal.colour": Relation(
        "animal",
        (("The {s} is {o}.", "{s}是{o}的。"), ("Every {s} is {o}.", "每只{s}都是{o}的。")),
        ("What colour is the {s}?", "{s}是什么颜色的？"),
    ),
    "animal.size": Relation(
        "animal",
        (
            ("The {s} is {a_o} animal.", "{s}是一种{o}动物。"),
            ("The {s} has {a_o} body.", "{s}的体型属于{o}。"),
        ),
        ("How big is the {s}?", "{s}的体型有多大？"),
    ),
    "animal.food": Relation(
        "animal",
        (("The {s} eats {o}.", "{s}吃{o}。"), ("A {s} likes to eat {o}.", "{s}爱吃{o}。")),
        ("What does the {s} eat?", "{s}吃什么？"),
    ),
    "animal.sound": Relation(
        "animal",
        (("The {s} says {o}.", "{s}的叫声是{o}。"), ("You can hear the {s} go {o}.", "{s}会发出{o}的声音。")),
        ("What sound does the {s} make?", "{s}怎么叫？"),
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Stories: short narratives built only from true facts plus neutral connecting sentences. Each line is
# (English, Chinese); the placeholders name the facts they rely on, and text.py drops a line whose
# fact is held out. {p} and {q} are people, {city}/{qcity} their homes, {river} the river of {city},
# {pet} an animal, {country} a country, {capital} its capital, {language} its language.
STORY = {
    "intro": ("This is a story about {p}.", "这是一个关于{p}的故事。"),
    "morning": ("Every morning, {p} eats {food}.", "每天早上，{p}都吃{food}。"),
    "work": ("Then {p} goes to work as {a_job}.", "然后{p}去上班，做{job}的工作。"),
    "walk": ("{p} takes the {pet} for a walk by the {river} River.", "{p}带着{pet}在{river}河边散步。"),
    "pet_sound": ("At home, the {pet} of {p} says {sound}.", "回到家，{p}的{pet}发出{sound}的叫声。"),
    "evening": ("In the evening, {p} plays with the {obj}.", "晚上，{p}在家里玩{obj}。"),
    "happy": ("{p} is happy.", "{p}很开心。"),
    "sleep": ("At night, {p} sleeps well in {city}.", "晚上，{p}在{city}睡得很好。"),
    "visit": ("One day, {p} travels to {qcity} to see {q}.", "有一天，{p}去{qcity}看望{q}。"),
    "together": ("They eat {qfood} together, because {q} likes it.", "他们一起吃{qfood}，因为{q}喜欢吃。"),
    "show_pet": ("{q} shows {p} the pet {qpet}.", "{q}给{p}看了自己的{qpet}。"),
    "friends": ("{p} and {q} are good friends.", "{p}和{q}是好朋友。"),
    "trip": ("{p} travels to {country}.", "{p}去{country}旅行。"),
    "trip_lang": ("In {country}, people speak {language}.", "在{country}，人们说{language}。"),
    "trip_capital": (
        "{p} visits {capital}, the capital of {country}.",
        "{p}参观了{country}的首都{capital}。",
    ),
    "trip_food": ("There, {p} eats {staple}.", "在那里，{p}吃了{staple}。"),
    "trip_flag": ("{p} sees the {flag} flag of {country}.", "{p}看到了{country}的{flag}国旗。"),
    "trip_home": ("Then {p} goes back home to {city}.", "然后{p}回到了{city}的家。"),
    "animal_day": ("Every day, the {pet} looks for {pfood}.", "每天，{pet}都去找{pfood}吃。"),
    "animal_owner": ("{p} has a pet {pet}.", "{p}养了一只{pet}。"),
    "animal_end": ("When it is happy, the {pet} says {sound}.", "{pet}开心的时候会发出{sound}的声音。"),
}


# ---------------------------------------------------------------------------------------------------------
# Tasks: instructions, arithmetic, and the answers a preference pair rejects.
ARITH_OPS = {"+": ("plus", "加"), "-": ("minus", "减"), "*": ("times", "乘")}
ARITH_MAX = {"+": 20, "-": 20, "*": 12}  # largest operand per operation
MAX_NUMBER = 144  # largest number any text holds (12 * 12; ages and their wrong guesses stay below it)
ARITH_WORDS = ("{a} {op} {b} is {r}.", "{a}{op}{b}等于{r}。")  # word form, numbers as words
ARITH_QUESTION = ("What is {a} {op} {b}?", "{a} {op} {b}等于几？")
ARITH_ANSWER = ("{r}.", "{r}。")
TRANSLATE = {
    "en-zh": "Translate into Chinese.",
    "zh-en": "把这句话翻译成英文。",
}
EVASIVE = [("I do not know.", "我不知道。"), ("I am not sure.", "我不确定。")]


def all_template_strings() -> list[str]:
    """Every literal template above, for building the vocabulary."""
    out: list[str] = []
    for rel in RELATIONS.values():
        for pair in (*rel.statements, rel.question):
            out.extend(pair)
    for pair in (*STORY.values(), ARITH_WORDS, ARITH_QUESTION, ARITH_ANSWER, *EVASIVE):
        out.extend(pair)
    out.extend(TRANSLATE.values())
    out.extend(w for pair in ARITH_OPS.values() for w in pair)
    out.extend(
        f"{{o}}{LANGUAGE_SUFFIX[1]} {LANGUAGE_SUFFIX[0]} {ANIMAL_MEASURE} {ONE_ZH} {' '.join(ARTICLES)}".split()
    )
    return out


_WORD = re.compile(r"[A-Za-z]+|[0-9]+|[\u4e00-\u9fff]")


def split_words(text: str) -> list[str]:
    """The world's notion of a word: an English letter run (lowercased), a digit run, or one Chinese character.

    Punctuation, symbols (+ - * =) and spaces are not words. `World.vocabulary()` uses the same rule, so
    `sum(w in vocab for w in split_words(text)) / len(split_words(text))` is the fraction of valid world words.
    """
    return [w.lower() for w in _WORD.findall(text)]


def lexicon_words() -> set[str]:
    """Every word of the templates, the value lists and the numbers (names are added by the universe)."""
    words: set[str] = set()
    for text in all_template_strings():
        words.update(split_words(text))
    for pairs in (COLOURS, FOODS, ANIMAL_FOODS, JOBS, SIZES, SOUNDS, OBJECTS):
        for p in pairs:
            words.update(split_words(" ".join(p)))
    words.update(NUMBER_WORDS_EN)
    words.update(split_words(" ".join(NUMBER_WORDS_ZH)))
    words.update(str(n) for n in range(MAX_NUMBER + 1))
    return words
