"""The UVA/Padova type 1 diabetes simulator model (glucose-insulin system with meals)."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .._custom_types import Array, Float, Params, State, TimeLike
from ._base import AbstractODEModel, get

#: Minutes per hour: the model's rate constants are per minute, its time axis is in hours.
_MIN_PER_H = 60.0
#: Picomoles of insulin per international unit (the conversion simglucose uses).
_PMOL_PER_U = 6000.0
#: Milligrams per gram (meals are dosed in grams of carbohydrate).
_MG_PER_G = 1000.0

#: The meal-start marker decays at this rate (1/min) and, while it lasts, clears the
#: emptied-since-meal memory `W` at `_CLEAR_RATE` times its value (1/min): in all, `W` is
#: multiplied by exp(-_CLEAR_RATE / _MARKER_DECAY) = exp(-12) = 6e-6, within about a minute.
_MARKER_DECAY = 4.0
_CLEAR_RATE = 48.0


def gastric_emptying(params: Params, qsto: Array, dbar: Array) -> Array:
    r"""The nonlinear gastric emptying rate constant $k_{empt}$ (1/min).

    $$k_{empt} = k_{min} + \frac{k_{max} - k_{min}}{2}\Big\{\tanh[\alpha(Q_{sto} - b\bar D)]
      - \tanh[\beta(Q_{sto} - d\bar D)] + 2\Big\},\quad
      \alpha = \frac{5}{2\bar D(1 - b)},\ \beta = \frac{5}{2\bar D d}$$

    written in the ratio $r = Q_{sto}/\bar D$, in which it is homogeneous; $k_{max}$ when
    $\bar D \le 0$ (no meal yet). Units of `qsto` and `dbar` cancel (both g here).

    References: Dalla Man C, Camilleri M, Cobelli C (2006). *IEEE Trans Biomed Eng*
    53:2472-2478; Dalla Man C, Rizza RA, Cobelli C (2007). *IEEE Trans Biomed Eng*
    54:1740-1749.
    """
    kmax, kmin = get(params, "kmax"), get(params, "kmin")
    b, d = get(params, "b"), get(params, "d")
    fed = dbar > 0
    r = qsto / jnp.where(fed, dbar, 1.0)
    shape = jnp.tanh(2.5 * (r - b) / (1.0 - b)) - jnp.tanh(2.5 * (r - d) / d) + 2.0
    return jnp.where(fed, kmin + (kmax - kmin) / 2.0 * shape, kmax)


class UVAPadova(AbstractODEModel):
    r"""The UVA/Padova type 1 diabetes simulator model: glucose, insulin and meals.

    The meal simulation model of the glucose-insulin system (Dalla Man, Rizza, Cobelli 2007)
    with subcutaneous insulin and glucose (the UVA/Padova simulator, Kovatchev et al. 2009;
    Dalla Man et al. 2014), in the form and with the parameters of simglucose (Xie 2018):
    13 physiological states and two bookkeeping states for gastric emptying. It describes
    one patient; the 30 virtual patients are `twins.t1d.load_patients()`.

    **Units.** Time in **hours** (the rate constants are per minute, as published; the
    vector field is multiplied by 60). Meals are doses of carbohydrate in **g** into
    compartment 1 (`meal_cmt`; a zero-order infusion of the eating time, simglucose eats
    at 5 g/min); insulin doses in **U** into compartment 11 (`insulin_cmt`): the basal rate
    as an infusion in U/h, boluses as doses (or one-minute infusions, as a pump gives them).

    **States** (compartment number, name, unit):

    | # | name | unit | |
    | --- | --- | --- | --- |
    | 1 | `Qsto1` | g | stomach, solid phase (meals enter here) |
    | 2 | `Qsto2` | g | stomach, liquid phase |
    | 3 | `Qgut` | g | intestine |
    | 4 | `Gp` | mg/kg | plasma glucose |
    | 5 | `Gt` | mg/kg | tissue glucose |
    | 6 | `Ip` | pmol/kg | plasma insulin |
    | 7 | `X` | pmol/L | insulin action on glucose utilisation |
    | 8 | `I1` | pmol/L | delayed insulin signal, first compartment |
    | 9 | `Id` | pmol/L | delayed insulin (action on production) |
    | 10 | `Il` | pmol/kg | liver insulin |
    | 11 | `Isc1` | U | subcutaneous insulin, first compartment (insulin enters here) |
    | 12 | `Isc2` | U | subcutaneous insulin, second compartment |
    | 13 | `Gs` | mg/kg | subcutaneous (interstitial) glucose |
    | 14 | `W` | g | carbohydrate emptied from the stomach since the last meal started |
    | 15 | `meal_start` | 1 | meal-start marker (a dose of 1 at each meal's start) |

    **Equations** (per minute; $Q_{sto} = Q_{sto1} + Q_{sto2}$, $I = I_p/V_i$):

    $$\begin{aligned}
    \dot Q_{sto1} &= -k_{max} Q_{sto1} + \text{meal}(t), \quad
    \dot Q_{sto2} = k_{max} Q_{sto1} - k_{empt} Q_{sto2}, \quad
    \dot Q_{gut} = k_{empt} Q_{sto2} - k_{abs} Q_{gut}\\
    Ra &= 1000\, f k_{abs} Q_{gut} / BW \quad (\text{mg/kg/min})\\
    EGP &= \max(0,\ k_{p1} - k_{p2} G_p - k_{p3} I_d), \quad
    E = k_{e1} \max(0, G_p - k_{e2})\\
    \dot G_p &= EGP + Ra - F_{snc} - E - k_1 G_p + k_2 G_t, \quad
    \dot G_t = -\frac{(V_{m0} + V_{mx} X) G_t}{K_{m0} + G_t} + k_1 G_p - k_2 G_t\\
    \dot I_p &= -(m_2 + m_4) I_p + m_1 I_l + R_{ai}, \quad
    \dot I_l = -(m_1 + m_{30}) I_l + m_2 I_p, \quad
    R_{ai} = \frac{6000}{BW}(k_{a1} I_{sc1} + k_{a2} I_{sc2})\\
    \dot X &= -p_{2u} X + p_{2u}(I - I_b), \quad
    \dot I_1 = -k_i (I_1 - I), \quad \dot I_d = -k_i (I_d - I_1)\\
    \dot I_{sc1} &= \text{insulin}(t) - (k_d + k_{a1}) I_{sc1}, \quad
    \dot I_{sc2} = k_d I_{sc1} - k_{a2} I_{sc2}, \quad
    \dot G_s = -k_{sc} G_s + k_{sc} G_p
    \end{aligned}$$

    with the gastric emptying rate $k_{empt}(Q_{sto}, \bar D)$ of `gastric_emptying`.

    **The meal size $\bar D$.** The 2007 paper takes $\bar D$ as the amount of the meal;
    simglucose takes the stomach content when the meal started plus what has been eaten of
    it so far, which is $\bar D = Q_{sto} + W$ with $W$ the amount emptied since the meal
    started, $\dot W = k_{empt} Q_{sto2}$, $W = 0$ at the start. simglucose sets it at the
    meal's start (an event); doses here only add to a state, so each meal also gives a
    dose of 1 into the marker `meal_start` (compartment 15, `meal_start_cmt`;
    `twins.t1d.meal` gives both), which decays at 4/min and clears $W$ while it lasts:

    $$\dot W = k_{empt} Q_{sto2} - 48\, M W, \qquad \dot M = -4 M$$

    so that $W$ is multiplied by $e^{-12}$ within about a minute of the meal's start (what
    is emptied in that minute, a few tens of mg, is partly cleared with it). The two
    agree where the stomach is empty at a meal's start (the paper's meal tests), and so
    does simglucose. A meal given without its marker keeps adding to $W$.

    simglucose also zeroes the derivative of a state that has gone negative; the system is
    positive (every loss term is proportional to its state), so that is not repeated here.

    **Parameters** (simglucose's names and units; per patient in `twins.t1d`): `BW` body
    weight (kg); `kabs`, `kmax`, `kmin` (1/min), `b`, `d` (fractions of the meal), `f`
    (fraction absorbed); `Vg` (dL/kg), `k1`, `k2` (1/min), `kp1` (mg/kg/min), `kp2`
    (1/min), `kp3` (mg/kg/min per pmol/L), `Fsnc` (mg/kg/min), `ke1` (1/min), `ke2`
    (mg/kg), `Vm0` (mg/kg/min), `Vmx` (mg/kg/min per pmol/L), `Km0` (mg/kg); `Vi`
    (L/kg), `m1`, `m2`, `m4`, `m30` (1/min), `p2u`, `ki` (1/min), `Ib` (pmol/L);
    `ka1`, `ka2`, `kd`, `ksc` (1/min); and the basal steady state the simulation starts
    from: `Gpb`, `Gtb` (mg/kg), `Ipb`, `Ilb` (pmol/kg), `isc1ss`, `isc2ss` (pmol/kg).

    **Initial state** (and after a reset): the basal steady state, $G_p = G_s = G_{pb}$,
    $G_t = G_{tb}$, $I_p = I_{pb}$, $I_l = I_{lb}$, $I_1 = I_d = I_b$,
    $I_{sc1,2} = $ `isc1ss`, `isc2ss` $\times BW/6000$ (U), empty gut, $X = W = M = 0$. It is
    the steady state under the patient's basal insulin `u2ss` (pmol/kg/min), that is
    $u_{2ss} \cdot BW \cdot 60/6000$ U/h (`twins.t1d.basal_rate`).

    **Outputs:** `BG` plasma glucose $G_p/V_g$ and `Gsub` subcutaneous glucose
    $G_s/V_g$ (mg/dL; a CGM reads `Gsub`, `twins.t1d.cgm_readings`).

    References: Dalla Man C, Rizza RA, Cobelli C (2007). Meal simulation model of the
    glucose-insulin system. *IEEE Trans Biomed Eng* 54:1740-1749; Dalla Man C, Camilleri M,
    Cobelli C (2006). *IEEE Trans Biomed Eng* 53:2472-2478 (gastric emptying); Kovatchev
    BP, Breton M, Dalla Man C, Cobelli C (2009). In silico preclinical trials: a proof of
    concept in closed-loop control of type 1 diabetes. *J Diabetes Sci Technol* 3:44-55
    (subcutaneous insulin and glucose); Dalla Man C, Micheletto F, Lv D, Breton M,
    Kovatchev B, Cobelli C (2014). The UVA/PADOVA type 1 diabetes simulator: new features.
    *J Diabetes Sci Technol* 8:26-34; Xie J (2018). Simglucose v0.2.1,
    https://github.com/jxx123/simglucose (the implementation and parameters followed here).
    """

    state_names: ClassVar[tuple[str, ...]] = (
        "Qsto1",
        "Qsto2",
        "Qgut",
        "Gp",
        "Gt",
        "Ip",
        "X",
        "I1",
        "Id",
        "Il",
        "Isc1",
        "Isc2",
        "Gs",
        "W",
        "meal_start",
    )
    param_names: ClassVar[tuple[str, ...]] = (
        "BW",
        "kabs",
        "kmax",
        "kmin",
        "b",
        "d",
        "f",
        "Vg",
        "k1",
        "k2",
        "kp1",
        "kp2",
        "kp3",
        "Fsnc",
        "ke1",
        "ke2",
        "Vm0",
        "Vmx",
        "Km0",
        "Vi",
        "m1",
        "m2",
        "m4",
        "m30",
        "p2u",
        "ki",
        "Ib",
        "ka1",
        "ka2",
        "kd",
        "ksc",
        "Gpb",
        "Gtb",
        "Ipb",
        "Ilb",
        "isc1ss",
        "isc2ss",
    )
    #: Every parameter must be finite; these must also be > 0 (`kp2`, `kp3`, `Fsnc`, `ke1`
    #: and `ke2` may be 0: no such term).
    positive_params: ClassVar[tuple[str, ...]] = tuple(
        name for name in param_names if name not in ("kp2", "kp3", "Fsnc", "ke1", "ke2")
    )
    output_names: ClassVar[tuple[str, ...]] = ("BG", "Gsub")
    autonomous: ClassVar[bool] = True
    #: The compartment that receives meals (g of carbohydrate).
    meal_cmt: ClassVar[int] = 1
    #: The compartment that receives subcutaneous insulin (U).
    insulin_cmt: ClassVar[int] = 11
    #: The meal-start marker compartment (a dose of 1 when a meal starts).
    meal_start_cmt: ClassVar[int] = 15

    def vector_field(self, t: TimeLike, x: State, params: Params) -> State:
        p = {name: get(params, name) for name in self.param_names}
        qsto1, qsto2, qgut, gp, gt, ip, xx, i1, id_, il, isc1, isc2, gs, w = (
            x[i] for i in range(14)
        )
        qsto = qsto1 + qsto2
        kempt = gastric_emptying(params, qsto, qsto + w)
        emptied = kempt * qsto2
        # A meal's start clears W (see the class docstring).
        marker = x[14]
        ra = _MG_PER_G * p["f"] * p["kabs"] * qgut / p["BW"]
        egp = jnp.maximum(p["kp1"] - p["kp2"] * gp - p["kp3"] * id_, 0.0)
        renal = p["ke1"] * jnp.maximum(gp - p["ke2"], 0.0)
        uid = (p["Vm0"] + p["Vmx"] * xx) * gt / (p["Km0"] + gt)
        insulin = ip / p["Vi"]
        rai = _PMOL_PER_U / p["BW"] * (p["ka1"] * isc1 + p["ka2"] * isc2)
        dx = jnp.stack(
            [
                -p["kmax"] * qsto1,
                p["kmax"] * qsto1 - emptied,
                emptied - p["kabs"] * qgut,
                egp + ra - p["Fsnc"] - renal - p["k1"] * gp + p["k2"] * gt,
                -uid + p["k1"] * gp - p["k2"] * gt,
                -(p["m2"] + p["m4"]) * ip + p["m1"] * il + rai,
                -p["p2u"] * xx + p["p2u"] * (insulin - p["Ib"]),
                -p["ki"] * (i1 - insulin),
                -p["ki"] * (id_ - i1),
                -(p["m1"] + p["m30"]) * il + p["m2"] * ip,
                -(p["ka1"] + p["kd"]) * isc1,
                p["kd"] * isc1 - p["ka2"] * isc2,
                -p["ksc"] * gs + p["ksc"] * gp,
                emptied - _CLEAR_RATE * marker * w,
                -_MARKER_DECAY * marker,
            ]
        )
        return _MIN_PER_H * dx

    def output(self, params: Params, x: State) -> Float[Array, " 2"]:
        vg = get(params, "Vg")
        return jnp.stack([x[..., 3] / vg, x[..., 12] / vg], axis=-1)

    def initial_state(self, params: Params) -> State:
        p = {name: get(params, name) for name in self.param_names}
        to_units = p["BW"] / _PMOL_PER_U
        zero = jnp.zeros_like(p["Gpb"])
        return jnp.stack(
            [
                zero,
                zero,
                zero,
                p["Gpb"],
                p["Gtb"],
                p["Ipb"],
                zero,
                p["Ib"],
                p["Ib"],
                p["Ilb"],
                p["isc1ss"] * to_units,
                p["isc2ss"] * to_units,
                p["Gpb"],
                zero,
                zero,
            ]
        )
