"""Coarse action categories of UCF-101 and HMDB-51, for per-category accuracy.

UCF-101 groups its 101 classes into five types (as on the dataset's page): human-object
interaction, body-motion only, human-human interaction, playing musical instruments and
sports. HMDB-51 groups its 51 classes into five types (as in the HMDB paper): facial
actions, facial actions with object manipulation, general body movements, body movements
with object interaction and body movements for human interaction.

The maps are class name -> category, with class names spelled exactly as in UCF-101's
classInd.txt and HMDB-51's folder names, so they plug straight into
``metrics.category_accuracy(conf, class_names, category_of)``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from reslstm.errors import ConfigError

UCF101_CATEGORY_NAMES = (
    "human-object interaction",
    "body-motion only",
    "human-human interaction",
    "playing musical instruments",
    "sports",
)
HMDB51_CATEGORY_NAMES = (
    "facial actions",
    "facial actions with object manipulation",
    "general body movements",
    "body movements with object interaction",
    "body movements for human interaction",
)

_UCF101_MEMBERS = {
    "human-object interaction": (
        "ApplyEyeMakeup ApplyLipstick BlowDryHair BrushingTeeth CuttingInKitchen Hammering "
        "HulaHoop JugglingBalls JumpRope Knitting Mixing MoppingFloor Nunchucks PizzaTossing "
        "ShavingBeard SkateBoarding SoccerJuggling Typing WritingOnBoard YoYo"
    ),
    "body-motion only": (
        "BabyCrawling BlowingCandles BodyWeightSquats HandstandPushups HandstandWalking "
        "JumpingJack Lunges PullUps PushUps RockClimbingIndoor RopeClimbing Swing TaiChi "
        "TrampolineJumping WalkingWithDog WallPushups"
    ),
    "human-human interaction": "BandMarching Haircut HeadMassage MilitaryParade SalsaSpin",
    "playing musical instruments": (
        "Drumming PlayingCello PlayingDaf PlayingDhol PlayingFlute PlayingGuitar PlayingPiano "
        "PlayingSitar PlayingTabla PlayingViolin"
    ),
    "sports": (
        "Archery BalanceBeam BaseballPitch Basketball BasketballDunk BenchPress Biking Billiards "
        "Bowling BoxingPunchingBag BoxingSpeedBag BreastStroke CleanAndJerk CliffDiving "
        "CricketBowling CricketShot Diving Fencing FieldHockeyPenalty FloorGymnastics "
        "FrisbeeCatch FrontCrawl GolfSwing HammerThrow HighJump HorseRace HorseRiding "
        "IceDancing JavelinThrow Kayaking LongJump ParallelBars PoleVault PommelHorse Punch "
        "Rafting Rowing Shotput Skiing Skijet SkyDiving SoccerPenalty StillRings SumoWrestling "
        "Surfing TableTennisShot TennisSwing ThrowDiscus UnevenBars VolleyballSpiking"
    ),
}

_HMDB51_MEMBERS = {
    "facial actions": "smile laugh chew talk",
    "facial actions with object manipulation": "smoke eat drink",
    "general body movements": (
        "cartwheel clap climb climb_stairs dive fall_floor flic_flac handstand jump pullup "
        "pushup run sit situp somersault stand turn walk wave"
    ),
    "body movements with object interaction": (
        "brush_hair catch draw_sword dribble golf hit kick_ball pick pour push ride_bike "
        "ride_horse shoot_ball shoot_bow shoot_gun swing_baseball sword_exercise throw"
    ),
    "body movements for human interaction": "fencing hug kick kiss punch shake_hands sword",
}


def _invert(members: dict[str, str], categories: tuple[str, ...]) -> Mapping[str, str]:
    """{category: "a b c"} -> read-only {class: category}, refusing a class listed twice."""
    assert tuple(members) == categories
    out: dict[str, str] = {}
    for category, names in members.items():
        for name in names.split():
            if name in out:
                raise AssertionError(f"class {name} listed under {out[name]} and {category}")
            out[name] = category
    return MappingProxyType(dict(sorted(out.items())))


UCF101_CATEGORIES: Mapping[str, str] = _invert(_UCF101_MEMBERS, UCF101_CATEGORY_NAMES)
HMDB51_CATEGORIES: Mapping[str, str] = _invert(_HMDB51_MEMBERS, HMDB51_CATEGORY_NAMES)


def categories_for(dataset: str) -> dict[str, str]:
    """Class -> category map for "ucf101", "hmdb51" or "synthetic"; fails loudly otherwise."""
    key = dataset.lower().replace("-", "").replace("_", "")
    if key == "ucf101":
        return dict(UCF101_CATEGORIES)
    if key == "hmdb51":
        return dict(HMDB51_CATEGORIES)
    if key == "synthetic":
        from reslstm.datasets.synthetic import SYNTHETIC_CATEGORIES  # lazy: pulls in PyAV

        return dict(SYNTHETIC_CATEGORIES)
    raise ConfigError(f"no categories for dataset {dataset!r}; known: 'ucf101', 'hmdb51', 'synthetic'")


def category_names(dataset: str) -> tuple[str, ...]:
    """The categories of a dataset in their documented order."""
    cats = categories_for(dataset)
    order = {"ucf101": UCF101_CATEGORY_NAMES, "hmdb51": HMDB51_CATEGORY_NAMES}
    key = dataset.lower().replace("-", "").replace("_", "")
    return order.get(key, tuple(dict.fromkeys(cats.values())))
