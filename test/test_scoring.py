"""The classic score against hand-computed cases (numpy only, no TensorFlow)."""

import cv2
from followme_common import scoring
import numpy as np
import pytest


def probabilities_for(ids: np.ndarray) -> np.ndarray:
    """Confident probabilities (0.9 / 0.05 / 0.05) predicting exactly these class ids."""
    probs = np.full((*ids.shape, 3), 0.05, np.float32)
    np.put_along_axis(probs, ids[..., None].astype(np.int64), 0.9, axis=-1)
    return probs


def ids_with_hero(pixels: int, size=8) -> np.ndarray:
    ids = np.zeros((size, size), np.uint8)
    ids.flat[:pixels] = scoring.HERO
    return ids


def test_iou_of_two_empty_masks_is_zero():
    empty = np.zeros((4, 4), bool)
    assert scoring.iou(empty, empty) == 0.0


def test_iou_hand_computed():
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, :3] = True       # 3 pixels
    truth[0, 1:] = True      # 3 pixels, 2 shared -> union 4
    assert scoring.iou(pred, truth) == pytest.approx(2 / 4)


def test_frame_without_hero_scores_zero_and_counts_nothing():
    ids = np.ones((8, 8), np.uint8)  # only other people
    frame = scoring.score_frame(probabilities_for(ids), ids)
    assert frame.hero_iou == 0.0
    assert frame.class_iou[1] == 1.0
    assert not frame.truth_present and not frame.pred_present
    result = scoring.SetScore([frame])
    assert (result.true_positives, result.false_negatives, result.false_positives) == (0, 0, 0)


@pytest.mark.parametrize('pixels, present', [(3, False), (4, True)])
def test_hero_present_means_more_than_three_pixels(pixels, present):
    ids = ids_with_hero(pixels)
    frame = scoring.score_frame(probabilities_for(ids), ids)
    assert frame.truth_present is present
    assert frame.pred_present is present
    assert frame.hero_iou == 1.0  # the IoU itself has no threshold


def test_probability_of_exactly_half_is_not_a_prediction():
    ids = ids_with_hero(10)
    probs = np.zeros((8, 8, 3), np.float32)
    probs[..., scoring.HERO] = 0.5
    frame = scoring.score_frame(probs, ids)
    assert frame.pred_hero_pixels == 0
    assert frame.hero_iou == 0.0


def test_detection_counts():
    hero = ids_with_hero(10)
    none = np.zeros((8, 8), np.uint8)
    frames = [
        scoring.score_frame(probabilities_for(hero), hero),   # TP
        scoring.score_frame(probabilities_for(none), hero),   # FN
        scoring.score_frame(probabilities_for(hero), none),   # FP
        scoring.score_frame(probabilities_for(none), none),   # nothing
    ]
    result = scoring.SetScore(frames)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (1, 1, 1)
    # hero IoU averaged over ALL frames: 1, 0, 0, 0
    assert result.mean_iou() == pytest.approx(0.25)


def test_final_score_hand_computed():
    hero = ids_with_hero(16)
    half = ids_with_hero(8)      # predicting 8 of the 16 hero pixels -> IoU 0.5
    none = np.zeros((8, 8), np.uint8)
    following = scoring.SetScore([scoring.score_frame(probabilities_for(hero), hero),
                                  scoring.score_frame(probabilities_for(half), hero)])
    patrol = scoring.SetScore([scoring.score_frame(probabilities_for(none), hero)])
    non_targ = scoring.SetScore([scoring.score_frame(probabilities_for(hero), none),
                                 scoring.score_frame(probabilities_for(none), none)])
    report = scoring.final_score({'following_images': following, 'patrol_with_targ': patrol,
                                  'patrol_non_targ': non_targ})
    # TP 2, FN 1, FP 1 -> weight 0.5; IoU following (1 + 0.5) / 2, patrol 0 -> final IoU 0.375
    assert report['weight'] == pytest.approx(0.5)
    assert report['final_iou'] == pytest.approx(0.375)
    assert report['final_score'] == pytest.approx(0.1875)
    assert report['sets']['patrol_with_targ']['false_negatives'] == 1
    assert report['sets']['patrol_non_targ']['false_positives'] == 1


def test_final_score_needs_all_three_sets():
    with pytest.raises(ValueError, match='patrol_non_targ'):
        scoring.final_score({'following_images': scoring.SetScore(),
                             'patrol_with_targ': scoring.SetScore()})


def test_weight_is_zero_when_nothing_to_count():
    assert scoring.detection_weight([scoring.SetScore()]) == 0.0


@pytest.mark.parametrize('src, dst', [((256, 256), (160, 160)), ((37, 53), (160, 96)),
                                      ((160, 160), (256, 200))])
def test_truth_resize_picks_the_pixels_opencv_picks(src, dst):
    ids = np.random.default_rng(0).integers(0, 3, src, dtype=np.uint8)
    expected = cv2.resize(ids, dst[::-1], interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(scoring.resize_nearest(ids, *dst), expected)


def test_truth_is_resized_to_the_prediction_size():
    truth = np.zeros((16, 16), np.uint8)
    truth[:8, :8] = scoring.HERO            # top-left quarter
    pred_ids = np.zeros((8, 8), np.uint8)
    pred_ids[:4, :4] = scoring.HERO
    frame = scoring.score_frame(probabilities_for(pred_ids), truth)
    assert frame.hero_iou == 1.0
    assert frame.truth_hero_pixels == 16


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match='probabilities'):
        scoring.score_frame(np.zeros((8, 8, 2)), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match='truth'):
        scoring.score_frame(np.zeros((8, 8, 3)), np.zeros((8, 8, 3), np.uint8))


def frame(truth_pixels, pred_pixels, hero_iou):
    return scoring.FrameScore((0.0, 0.0, hero_iou), truth_pixels, pred_pixels)


MIXED_SET = [frame(1000, 1000, 0.8), frame(1000, 0, 0.0),   # near: one found, one missed
             frame(100, 50, 0.5),                            # far: found
             frame(0, 10, 0.0), frame(0, 0, 0.0), frame(0, 0, 0.0), frame(0, 0, 0.0)]


def test_eval_mix_score_hand_computed():
    result = scoring.SetScore(list(MIXED_SET))
    # near: found 1 of 2; far: 1 of 1; no hero: a false hero in 1 of 4, each rate times
    # the evaluation sets' frame counts (539 near, 301 far, 270 without the hero).
    tp, fn, fp = 539 * 0.5 + 301 * 1.0, 539 * 0.5, 270 * 0.25
    expected = (0.4 + 0.5) / 2 * tp / (tp + fn + fp)
    assert scoring.eval_mix_score(result, 256 * 256) == pytest.approx(expected)
    # The one-set score weighs the same frames by their own counts.
    assert scoring.single_set_score(result) == pytest.approx((0.8 + 0.5) / 3 * 2 / 4)


def test_eval_mix_weight_is_the_plain_weight_when_the_mix_is_the_sets_own():
    result = scoring.SetScore(list(MIXED_SET))
    own = {'near': 2, 'far': 1, 'empty': 4}
    plain_iou = np.mean([0.4, 0.5])
    assert scoring.eval_mix_score(result, 256 * 256, own) == pytest.approx(
        plain_iou * scoring.detection_weight([result]))


def test_eval_mix_near_threshold_scales_with_the_frame():
    # 300 hero pixels is far at 256x256 (under 800) but near at 128x128 (over 200).
    result = scoring.SetScore([frame(300, 300, 1.0), frame(0, 0, 0.0)])
    near_only = {'near': 1, 'far': 0, 'empty': 1}
    assert scoring.eval_mix_score(result, 256 * 256, near_only) == 0.0
    assert scoring.eval_mix_score(result, 128 * 128, near_only) == pytest.approx(1.0)


def test_eval_mix_score_of_a_set_without_heroes_is_zero():
    assert scoring.eval_mix_score(scoring.SetScore([frame(0, 9, 0.0)]), 256 * 256) == 0.0
    assert scoring.eval_mix_score(scoring.SetScore(), 256 * 256) == 0.0
