"""Layout of the scoring kernel's data: codes, column constants of its state tables, parameters.

Every ``*_`` prefix names one table: ``PF_``/``PI_`` per point (float / int), ``GF_``/``GI_`` per group,
``RF_`` per relation, ``TH_`` per thermal model, ``SF_`` site scalars, ``PR_`` parameters ``prm[]``;
``Q_`` quantity codes, ``K_``/``R_`` record kinds and flags, ``RULE_`` rule codes, ``B_`` condition bits.
The kernel modules (``kernel_*.py``) and the Python side (``detector.py``, ``rules.py``,
``sensor_faults.py``) read them through :mod:`gridedge.scoring.kernel`, which re-exports them.

numba freezes these module globals into the compiled code: changing one needs the cache of every kernel
module rebuilt (numba only notices a change to the file that defines a kernel — see ``kernel.py``).
"""

from __future__ import annotations

import numpy as np

# ---- quantity codes (order of gateway.model.QUANTITIES) ---------------------------------------
Q_VOLTAGE, Q_CURRENT, Q_FREQUENCY, Q_P, Q_Q, Q_TEMP, Q_STATUS, Q_COUNTER, Q_TAP = range(9)

# ---- event kinds (order of EventKind) and record flags ------------------------------------------
K_GRID, K_SENSOR, K_STALE, K_TRIP, K_RESTORE = range(5)
R_START, R_END, R_INSTANT = 0, 1, 2

# ---- rule codes ---------------------------------------------------------------------------------
RULE_COMPOSITE = 1
RULE_VOLT_WARN = 2
RULE_VOLT_ALARM = 3
RULE_FREQ_WARN = 4
RULE_FREQ_ALARM = 5
RULE_OVER_RATING = 6
RULE_RANGE = 10
RULE_SCALE = 11
RULE_STUCK = 12
RULE_DRIFT = 13
RULE_SPIKE = 14
RULE_DROPOUT = 15
RULE_DEVICE_STALE = 16
RULE_THDRIFT = 17
RULE_ZERO = 19
RULE_MULTISPIKE = 22  # a point off for 2–10 readings that comes back to where it was, alone
RULE_THERMAL = 7
RULE_LOAD_RISE = 8  # early warning: a feeder's load departs upwards from its hour-of-week normal
RULE_LOAD_DROP = 9  # a feeder loses part of its load (not to zero: no trip)
RULE_OIL_RISE = 18  # oil temperature climbs away from its normal while the load does not explain it
RULE_TRIP = 20
RULE_RESTORE = 21

# ---- condition bits of a point (PI_COND) ---------------------------------------------------------
B_RANGE, B_SCALE, B_STUCK, B_DRIFT, B_DROPOUT, B_SPIKE, B_DEVSTALE = 1, 2, 4, 8, 16, 32, 64
B_THDRIFT = 128  # oil temperature disagrees with its thermal model, too slowly for a cooling failure
B_ZERO = 256  # a load point reads zero while its slot expects a load and its bay's other load points carry one
B_ERRATIC = 512  # the point spiked lately (PF_SPKU): its readings are no evidence of a grid incident meanwhile

# ---- per-point float state pf[P, NPF] ----------------------------------------------------------------
PF_VAL = 0  # newest good value
PF_PREV = 1  # the good value before it
PF_TS = 2  # time of the newest reading (any quality)
PF_GOOD = 3  # time of the newest good reading
PF_DT = 4  # EW of the reading interval (s)
PF_Z = 5  # z of the newest good reading (NaN while the slot is cold), per-point calibrated scale
PF_MEAN = 6  # slot mean used for it
PF_SD = 7  # slot std (with floor) used for it
PF_LVL = 8  # level: EW mean over all slots (short memory) — cold-start expectation
PF_LVLV = 9  # level variance
PF_LVLN = 10  # level sample count (capped)
PF_DABS = 11  # EW of |step| between consecutive readings (spike scale)
PF_REP = 12  # EW rate of exactly repeated readings (stuck test)
PF_FSTART = 13  # time the current fault condition began
PF_ZSCALE = 14  # calibrated z divisor (≥ 1)
PF_SUPP = 15  # suppressed until (run-time suppression)
PF_SPIKE_TS = 16  # time of the spike candidate
PF_SPIKE_D = 17  # its jump
PF_PREVSEG = 18  # value before the current segment (trip check)
PF_ZADJ = 19  # z after removing the site's common load mode (load quantities)
PF_STUCK_TS = 20  # time the current run of equal values began
PF_REXP = 21  # value a violated relation expects for this point (NaN if none)
PF_SPIKE_Z = 22  # z at the spike candidate
PF_PRIOR = 23  # 1 when a fleet prior filled some of this point's slots
PF_CMG = 24  # load points: gain on the site's common load mode (learned; 1 = moves with the median)
PF_CMXX = 25  # EW mean of cm²
PF_CMXY = 26  # EW mean of cm × own relative deviation
# early warning (kernel_trend): the deviation from the hour-of-week expectation (loads: relative, after the
# common mode; temperatures: °C), smoothed fast and slow; their difference is a departure developing now
PF_TRT = 27  # time of the last trend update (0 = restart)
PF_TRF = 28  # deviation smoothed over PR_TR_TF
PF_TRS = 29  # deviation smoothed over PR_TR_TS (the day's own offset)
PF_TRV = 30  # EW variance of (fast − slow) on calm data
PF_TRN = 31  # learned time (s)
PF_TRZ = 32  # (fast − slow) / its spread (NaN until learned)
PF_RES = 33  # reporting resolution: the smallest non-zero step seen (0 = none yet; ~0 = not quantised)
PF_SPKT = 34  # time of the last confirmed spike (0 = none)
PF_SPKU = 35  # erratic until (B_ERRATIC): 10 min after a spike, an hour after a repeated one
PF_SPKB = 36  # value before the open spike candidate's jump
# the full hour's own spread (schedule changes kick the frequency, loads step): EW of z² (before this
# spread) in the first minutes after the full hour vs the rest of the hour (1 = no hour effect)
PF_HKR = 37  # z² outside the first HOUR_CHANGE_MIN minutes
PF_HK0 = 38  # z² in minutes 0–4 after the full hour (PF_HK0 + 1: 4–8, PF_HK0 + 2: 8–15)
PF_TDC = 41  # loads: CUSUM of the trend z below −TREND_DROP_K per minute (a drop that holds)
PF_TRM = 42  # deviation smoothed over TREND_TM (9 min): PF_TRF − PF_TRM is the deviation's recent climb
PF_TRR = 43  # loads: consecutive evaluations of a fast rise (kernel_groups; kernel_trend resets it)
NPF = 44

# ---- per-point int state pi[P, NPI] -------------------------------------------------------------------
PI_STUCK = 0  # run of exactly repeated good readings
PI_COND = 1  # condition bits (B_*)
PI_FAULT = 2  # rule code of the active sensor fault (0 = none)
PI_FRUN = 3  # consecutive evaluations with a condition
PI_FCLR = 4  # consecutive evaluations without one (while a fault is active)
PI_SEG = 5  # segment id of the newest reading
PI_SPIKE = 6  # readings of the open spike candidate (1 = the newest reading jumped; 0 = none)
PI_DRIFT = 7  # consecutive relation evaluations that pin a violation on this point
PI_INCONS = 8  # 1 while the point is (softly) inconsistent with its peers
PI_NGOOD = 9  # good readings seen (capped)
PI_SCALE = 10  # consecutive readings at ×10 / ×0.1 of the expectation
PI_SLOT = 11  # slot of the newest reading
NPI = 12

# ---- per-group state ------------------------------------------------------------------------------
GF_SCORE = 0
GF_THR = 1  # effective threshold
GF_START = 2  # first exceeding evaluation of the current run
GF_ACT_START = 3  # start of the active event
GF_CALT = 4  # calibration time observed (s)
GF_LASTEVAL = 5
GF_SUPP = 6
GF_EVSCORE = 7  # peak score of the active event
GF_RESTORE = 8  # time of the last breaker re-close
GF_TRIP_TS = 9
NGF = 10

GI_RUN = 0
GI_ACTIVE = 1
GI_CLR = 2
GI_RULE = 3
GI_OPEN = 4
GI_TRIP = 5
GI_NWARM = 6
GI_STATE = 7  # 0 observing, 1 normal, 2 elevated, 3 anomaly, 4 open
GI_CHILDSEG = 8  # segment in which a child group was anomalous, open or restoring
GI_PEAKP = 9  # point with the largest |z| in the active event
NGI = 10

# ---- relations --------------------------------------------------------------------------------------
REL_SVI, REL_SI, REL_SUMP, REL_SUMQ = 1, 2, 3, 4
# ROLE_AUX: the children's other power quantity (Q for sum_p, P for sum_q): only the loss term's S²
ROLE_P, ROLE_Q, ROLE_V, ROLE_I, ROLE_TOTAL, ROLE_TERM, ROLE_AUX = range(7)
RF_MEAN, RF_VAR, RF_N, RF_LAST, RF_LVL, RF_E, RF_Z = range(7)
# sum relations: total − Σterms = L·(b0 + b1·T/L + b2·S²/L²) (no-load and load losses), learned online by
# time-decayed least squares; L = a fixed scale (the first total seen), T = Σterms, S² = T² + Σaux²
RF_SC = 7
RF_A00, RF_A01, RF_A02, RF_A11, RF_A12, RF_A22 = 8, 9, 10, 11, 12, 13
RF_V0, RF_V1, RF_V2 = 14, 15, 16
RF_B0, RF_B1, RF_B2 = 17, 18, 19
RF_EF = 20  # residual smoothed over REL_TF (slow drifts: the evidence of many readings)
RF_EFV = 21  # EW variance of the smoothed residual (clean data)
RF_EVT = 22  # time of the last evaluation
NRF = 23
REL_TF = 1800.0  # smoothing of the residual for the slow test (s)
RS_UNKNOWN, RS_SAT, RS_GREY, RS_SOFT, RS_VIOL = range(5)

# ---- device state -------------------------------------------------------------------------------------
DS_ACTIVE, DS_START = 0, 1

# ---- parameters prm[] -------------------------------------------------------------------------------
PR_TAU = 0
PR_MINN = 1
PR_MINDUR = 2
PR_CLEARN = 3
PR_VB1 = 4
PR_VB2 = 5
PR_FB1 = 6
PR_FB2 = 7
PR_F0 = 8
PR_STALE = 9
PR_GATE = 10
PR_SPIKE_K = 11
PR_SITE_SUPP = 12
PR_EMIT = 13
PR_HYST = 14
PR_REL_FLOOR = 15
PR_STUCK_MIN = 16
PR_DRIFT_N = 17
PR_RESTORE_HOLD = 18
PR_LEARN_BLOCK_MAX = 19
PR_REL_MIN_N = 20
PR_TH_TAU = 21  # thermal model: oil time constant (s)
PR_TH_R = 22  # ratio of load losses at rated load to no-load losses
PR_TH_X = 23  # oil exponent
PR_TH_RATIO = 24  # implied steady excess / current excess that marks a cooling failure (fast rise)
PR_TH_WARM = 25  # learned time (s) before the thermal model scores
PR_TH_LC = 26  # classification level in residual std
PR_REL_MIN_N2 = 27  # sum relations (regression): weight before they accuse
PR_REL_FLOOR2 = 28  # sum relations: floor of the residual std
PR_REL_EV = 29  # a violated relation is off by more than this (log), soft by half of it
PR_REL_EV2 = 30  # the same for sum relations
PR_TH_DRIFT = 31  # an oil residual beyond this (°C) that moved slowly is a drifting sensor
PR_REL_STICKY = 32  # isolation: a point already drifting keeps the blame within this much cost (z²)
PR_TH_DRIFT_K = 33  # ... and beyond this many residual std
PR_COH_Z = 34  # a leaf group's load points all beyond this |z|, the same way: anomalous at any threshold
PR_TR_TF = 35  # early warning: fast smoothing (s)
PR_TR_TS = 36  # slow smoothing (s)
PR_TR_TV = 37  # memory of the spread (s)
PR_TR_WARM = 38  # learned time before a point's trend counts (s)
PR_TR_Z = 39  # trend z a departure needs
PR_TR_D = 40  # loads: relative deviation from the hour-of-week expectation it needs (rise; drop: −)
PR_TR_DT = 41  # temperatures: deviation (°C) it needs
PR_TR_DDROP = 42  # loads: relative deviation a drop needs
NPR = 43

# ---- thermal model per transformer th[H, NTH] (H = groups with one oil temperature and a load) ----
TH_F = 0  # first-order filtered load factor ((k²R+1)/(R+1))^x
TH_T = 1  # time of the last filter update
TH_S = 2  # last good apparent power the model used
TH_K = 3  # per-unit load k of the last update
TH_FK = 4  # unfiltered load factor of the last update
TH_SLVL = 5  # EW level of S (rating fallback when no rating is configured)
TH_N = 6  # regression weight (time-decayed)
TH_LT = 7  # learned time (s)
TH_B0, TH_B1, TH_B2 = 8, 9, 10  # coefficients: d = b0 + b1·F_own + b2·mean(F_others)
TH_A00, TH_A01, TH_A02, TH_A11, TH_A12, TH_A22 = 11, 12, 13, 14, 15, 16  # EW Σ x xᵀ
TH_V0, TH_V1, TH_V2 = 17, 18, 19  # EW Σ x d
TH_VAR = 20  # EW variance of the residual
TH_E = 21  # residual (measured − modelled), °C
TH_EF = 22  # residual smoothed over 10 min
TH_ES = 23  # residual smoothed over 40 min
TH_U = 24  # implied steady-state excess ef + τ·d(ef)/dt
TH_EXP = 25  # modelled oil temperature (measured − residual)
TH_LATCH = 26  # 1 cooling failure (grid), -1 sensor drift, 0 none
TH_SRC = 27  # load source: 0 own P/Q, 1 children's P/Q, 2 held (no clean source)
TH_EVT = 28  # time of the last residual evaluation
TH_SD = 29  # residual std used (with floor)
TH_LLEARN = 30  # time of the last learning step
# which transformer moved? (two oils: "T1 reads high" = "T2 reads low" in the leave-one-out residual)
TH_DEVF = 31  # the oil's deviation from its own hour-of-week expectation, smoothed over TH_TF
TH_DEV0 = 32  # the same, held from the last calm time (residual within 2 σ)
TH_DEVN = 33  # 1 while TH_DEV0 is a valid reference
NTH = 34
TH_TF = 600.0  # fast smoothing of the residual (s)
TH_TS = 2400.0  # slow smoothing (s)

# ---- site scalars sf[] --------------------------------------------------------------------------
SF_SEG = 0
SF_LASTSTALE = 1
SF_CM = 2  # common load mode (relative deviation) of the newest segment
NSF = 4

# ---- calibration grid -------------------------------------------------------------------------------
CAL_GRID = np.geomspace(1.0, 40.0, 48)
WARM_VISITS = 2.2


def is_scored(q: int) -> bool:
    """Quantities that get hour-of-week baselines and z-scores (not status, counters, tap)."""
    return q <= Q_TEMP
