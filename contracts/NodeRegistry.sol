// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";
import {INodeRegistry} from "./interfaces/INodeRegistry.sol";

/// @title NodeRegistry
/// @notice Hosts stake FAB to offer models at their own prices. The registry binds a host's
/// Ethereum address to its libp2p peer id, which clients check against the Noise-authenticated
/// remote peer. A host is active (can be chosen for new sessions) only while registered, not
/// unbonding, and staking at least `minStake`.
///
/// The stake stays slashable for as long as any of the host's sessions can still settle:
/// unregistering starts the unbonding delay, and besides, every session the marketplace opens
/// locks the stake until that session's `expiresAt + disputeWindow` (after which anyone can
/// finalize it). `withdrawStake` waits for the later of the two, so the unbonding always
/// outlasts every session the host has open, however long.
///
/// Prices are kept per host, per model and per *price epoch*: whenever a host stops serving a
/// model (it drops it, or unregisters) that model's epoch moves on, so prices set before never
/// apply again, without looping over tokens to delete them.
contract NodeRegistry is INodeRegistry, Ownable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice payment = tokens * price / PRICE_PRECISION.
    uint256 public constant PRICE_PRECISION = 1000;
    uint256 public constant MAX_MODELS = 32;
    uint256 public constant MAX_ADDRS = 8;
    uint256 public constant MAX_PEER_ID_LENGTH = 64;
    uint256 public constant MAX_METADATA_LENGTH = 4096;

    struct Node {
        bytes peerId;
        string[] addrs;
        string metadata;
        bytes32[] models;
        uint256 stake;
        uint64 registeredAt;
        uint64 unbondingEnds;
        /// @dev The latest `expiresAt + disputeWindow` of the host's sessions (set by the
        /// marketplace at `open`); the stake cannot be withdrawn before it.
        uint64 stakeLockedUntil;
    }

    struct PriceInput {
        bytes32 modelId;
        address token;
        uint256 price;
    }

    IERC20 public immutable stakeToken;
    IModelRegistry public immutable modelRegistry;
    uint256 public minStake;
    uint64 public unbondingDelay;
    /// @notice The escrows (the session marketplace, the job board) that may lock a host's stake
    /// for the work it has taken on.
    mapping(address account => bool) public stakeLockers;
    /// @notice The one account that may slash stakes: the Slasher, which checks the evidence
    /// and picks who receives the slashed stake (the owner sets it).
    address public slasher;

    mapping(address host => Node) private _nodes;
    mapping(bytes32 peerIdHash => address host) private _hostOfPeerId;
    mapping(bytes32 modelId => address[] hosts) private _hostsByModel;
    mapping(bytes32 modelId => mapping(address host => uint256 indexPlusOne)) private _hostIndex;
    /// @dev Bumped each time the host stops serving the model; prices of older epochs lapse.
    mapping(address host => mapping(bytes32 modelId => uint256 epoch)) private _priceEpoch;
    mapping(
        address host
            => mapping(bytes32 modelId => mapping(uint256 epoch => mapping(address token => uint256)))
    ) private _prices;

    /// @notice Emitted when `host` registers with `stake`.
    event NodeRegistered(address indexed host, bytes peerId, uint256 stake);
    /// @notice Emitted when `host` changes its peer id or addresses.
    event EndpointUpdated(address indexed host, bytes peerId, string[] addrs);
    /// @notice Emitted when `host` changes its metadata.
    event MetadataUpdated(address indexed host, string metadata);
    /// @notice Emitted when `host` changes the set of models it serves.
    event ModelsUpdated(address indexed host, bytes32[] models);
    /// @notice Emitted when `host` sets its price for `modelId` in `token`.
    event PriceSet(address indexed host, bytes32 indexed modelId, address indexed token, uint256 price);
    /// @notice Emitted when `host` stops serving `modelId`: all its prices for it lapse.
    event PricesCleared(address indexed host, bytes32 indexed modelId);
    /// @notice Emitted when `host` adds stake.
    event StakeAdded(address indexed host, uint256 amount, uint256 total);
    /// @notice Emitted when `host` unregisters; its stake is withdrawable at `unbondingEnds`.
    event NodeUnregistered(address indexed host, uint64 unbondingEnds);
    /// @notice Emitted when `host` withdraws its stake after unbonding.
    event StakeWithdrawn(address indexed host, uint256 amount);
    /// @notice Emitted when the slasher slashes `amount` of `host`'s stake to `recipient`.
    event NodeSlashed(address indexed host, uint256 amount, address recipient);
    /// @notice Emitted when the minimum stake changes.
    event MinStakeSet(uint256 minStake);
    /// @notice Emitted when the unbonding delay changes.
    event UnbondingDelaySet(uint64 delay);
    /// @notice Emitted when `locker` is allowed (or no longer allowed) to lock stakes.
    event StakeLockerSet(address indexed locker, bool allowed);
    /// @notice Emitted when the slasher changes.
    event SlasherSet(address indexed slasher);
    /// @notice Emitted when a session or a job locks `host`'s stake until `until` (never shortened).
    event StakeLockedUntil(address indexed host, uint64 until);

    error AlreadyRegistered(address host);
    error NotRegistered(address host);
    error NotUnbonding(address host);
    error StillUnbonding(uint64 unbondingEnds);
    error StakeLocked(uint64 lockedUntil);
    error NotStakeLocker(address caller);
    error NotSlasher(address caller);
    error StakeTooLow(uint256 stake, uint256 minStake);
    error InvalidPeerId();
    error PeerIdTaken(address host);
    error TooManyAddrs(uint256 count);
    error MetadataTooLong(uint256 length);
    error NoModels();
    error TooManyModels(uint256 count);
    error DuplicateModel(bytes32 modelId);
    error ModelNotActive(bytes32 modelId);
    error ModelNotServed(bytes32 modelId);
    error HostNotActive(address host);
    error PriceNotOffered(address host, bytes32 modelId, address token);
    error ZeroAmount();
    error SlashExceedsStake(uint256 amount, uint256 stake);
    error ZeroAddress();

    /// @dev Registered and not unbonding; the stake may be below `minStake` (e.g. after a
    /// slash), so that the host can still top it up, manage its record, or leave.
    modifier onlyRegisteredHost() {
        if (!_isRegistered(_nodes[msg.sender])) revert NotRegistered(msg.sender);
        _;
    }

    /// @param initialOwner the owner, who sets the stake rules and the stake lockers, and slashes
    /// @param stakeToken_ the token hosts stake (FAB)
    /// @param modelRegistry_ the registry of the models hosts may serve
    /// @param minStake_ the least a host must stake to register and stay active
    /// @param unbondingDelay_ seconds from unregistering until the stake may be withdrawn
    constructor(
        address initialOwner,
        IERC20 stakeToken_,
        IModelRegistry modelRegistry_,
        uint256 minStake_,
        uint64 unbondingDelay_
    ) Ownable(initialOwner) {
        stakeToken = stakeToken_;
        modelRegistry = modelRegistry_;
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
    }

    // ----------------------------------------------------------------- host actions

    /// @notice Registers the caller as a host, pulling `stake` FAB (approve it first).
    /// @param peerId the libp2p peer id (multihash bytes) the host's node authenticates as
    /// @param addrs bootstrap multiaddrs, at most MAX_ADDRS
    /// @param metadata JSON: hardware, location, max concurrency
    /// @param models the model ids served, each active in the ModelRegistry
    /// @param prices prices per model and payment token (address(0) = ETH)
    /// @param stake the FAB to stake, at least `minStake`
    function register(
        bytes calldata peerId,
        string[] calldata addrs,
        string calldata metadata,
        bytes32[] calldata models,
        PriceInput[] calldata prices,
        uint256 stake
    ) external nonReentrant {
        Node storage node = _nodes[msg.sender];
        if (node.registeredAt != 0) revert AlreadyRegistered(msg.sender);
        if (stake < minStake) revert StakeTooLow(stake, minStake);
        node.registeredAt = uint64(block.timestamp);
        node.stake = stake;
        _setEndpoint(node, peerId, addrs);
        _setMetadata(node, metadata);
        _setModels(node, models);
        _setPrices(prices);
        emit NodeRegistered(msg.sender, peerId, stake);
        stakeToken.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @notice Replaces the caller's peer id and bootstrap addresses.
    /// @param peerId the libp2p peer id (multihash bytes); not another host's
    /// @param addrs bootstrap multiaddrs, at most MAX_ADDRS
    function updateEndpoint(bytes calldata peerId, string[] calldata addrs)
        external
        onlyRegisteredHost
    {
        _setEndpoint(_nodes[msg.sender], peerId, addrs);
    }

    /// @notice Replaces the caller's metadata JSON.
    /// @param metadata JSON: hardware, location, max concurrency; at most MAX_METADATA_LENGTH bytes
    function updateMetadata(string calldata metadata) external onlyRegisteredHost {
        _setMetadata(_nodes[msg.sender], metadata);
    }

    /// @notice Replaces the set of models the caller serves. Prices of dropped models lapse
    /// (a model dropped and added again has no price until it is set again); models kept keep
    /// their prices.
    /// @param models the model ids served from now on, each active in the ModelRegistry
    function updateModels(bytes32[] calldata models) external onlyRegisteredHost {
        Node storage node = _nodes[msg.sender];
        bytes32[] memory previous = node.models;
        _clearModels(node);
        _setModels(node, models);
        // Bounded by MAX_MODELS.
        for (uint256 i = 0; i < previous.length; ++i) {
            if (!servesModel(msg.sender, previous[i])) _clearPrices(previous[i]);
        }
    }

    /// @notice Sets prices for models the caller serves; a zero price stops accepting that token.
    /// @param prices prices per served model and payment token (address(0) = ETH)
    function setPrices(PriceInput[] calldata prices) external onlyRegisteredHost {
        _setPrices(prices);
    }

    /// @notice Adds `amount` FAB to the caller's stake.
    /// @param amount the FAB to add (approve it first); nonzero
    function addStake(uint256 amount) external onlyRegisteredHost nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[msg.sender];
        node.stake += amount;
        emit StakeAdded(msg.sender, amount, node.stake);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Stops serving (every price lapses) and starts the unbonding delay; the stake stays
    /// slashable until then, and until every session the host opened can no longer settle.
    function unregister() external onlyRegisteredHost {
        Node storage node = _nodes[msg.sender];
        bytes32[] memory previous = node.models;
        _clearModels(node);
        // Bounded by MAX_MODELS.
        for (uint256 i = 0; i < previous.length; ++i) {
            _clearPrices(previous[i]);
        }
        delete _hostOfPeerId[keccak256(node.peerId)];
        node.unbondingEnds = uint64(block.timestamp) + unbondingDelay;
        emit NodeUnregistered(msg.sender, node.unbondingEnds);
    }

    /// @notice Returns the caller's stake once its unbonding delay has passed and none of its
    /// sessions can settle any more (`stakeLockedUntil`), and forgets the host.
    function withdrawStake() external nonReentrant {
        Node storage node = _nodes[msg.sender];
        if (node.unbondingEnds == 0) revert NotUnbonding(msg.sender);
        // Unbonding and stake-lock deadlines; seconds of skew do not matter.
        // slither-disable-next-line timestamp
        if (block.timestamp < node.unbondingEnds) revert StillUnbonding(node.unbondingEnds);
        if (block.timestamp < node.stakeLockedUntil) revert StakeLocked(node.stakeLockedUntil);
        uint256 amount = node.stake;
        delete _nodes[msg.sender];
        emit StakeWithdrawn(msg.sender, amount);
        stakeToken.safeTransfer(msg.sender, amount);
    }

    // ----------------------------------------------------------------- escrows

    /// @notice Keeps `host`'s stake from being withdrawn before `until` (a session's
    /// `expiresAt + disputeWindow`, a claimed job's last settlement). Stake lockers only; a lock
    /// is extended, never shortened.
    /// @param host the session's or job's host (active: the escrow checked it)
    /// @param until the last moment the work can still settle
    function lockStake(address host, uint64 until) external {
        if (!stakeLockers[msg.sender]) revert NotStakeLocker(msg.sender);
        Node storage node = _nodes[host];
        if (until > node.stakeLockedUntil) {
            node.stakeLockedUntil = until;
            emit StakeLockedUntil(host, until);
        }
    }

    /// @notice Admits new work for `host`: checks that it is active and offers `modelId` for
    /// `token`, locks its stake until `until`, and returns its price. Stake lockers only; one
    /// call where opening a session would otherwise make four.
    /// @param host the host the client chose
    /// @param modelId the model the work is for
    /// @param token the payment token (address(0) = ETH)
    /// @param until the last moment the work can still settle
    /// @return price the host's current price for `modelId` in `token`, per PRICE_PRECISION tokens
    function admit(address host, bytes32 modelId, address token, uint64 until) external returns (uint256 price) {
        if (!stakeLockers[msg.sender]) revert NotStakeLocker(msg.sender);
        Node storage node = _nodes[host];
        if (!_isRegistered(node) || node.stake < minStake) revert HostNotActive(host);
        // Prices lapse (their epoch moves on) when the host stops serving the model, so a
        // current price means the model is served.
        price = _prices[host][modelId][_priceEpoch[host][modelId]][token];
        if (price == 0) revert PriceNotOffered(host, modelId, token);
        if (until > node.stakeLockedUntil) {
            node.stakeLockedUntil = until;
            emit StakeLockedUntil(host, until);
        }
    }

    // ----------------------------------------------------------------- slasher

    /// @notice Takes `amount` of `host`'s stake (active or unbonding) and sends it to `recipient`.
    /// The slasher only: it checks the evidence and chooses `recipient` (never its caller).
    /// @param host the host to slash
    /// @param amount the stake to take, at most the host's stake
    /// @param recipient who receives it (the treasury or the harmed client)
    function slash(address host, uint256 amount, address recipient) external nonReentrant {
        if (msg.sender != slasher) revert NotSlasher(msg.sender);
        Node storage node = _nodes[host];
        if (node.registeredAt == 0) revert NotRegistered(host);
        if (recipient == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (amount > node.stake) revert SlashExceedsStake(amount, node.stake);
        node.stake -= amount;
        emit NodeSlashed(host, amount, recipient);
        stakeToken.safeTransfer(recipient, amount);
    }

    // ----------------------------------------------------------------- owner actions

    /// @notice Sets the account that may slash stakes (the Slasher).
    /// @param slasher_ the new slasher
    function setSlasher(address slasher_) external onlyOwner {
        if (slasher_ == address(0)) revert ZeroAddress();
        slasher = slasher_;
        emit SlasherSet(slasher_);
    }

    /// @notice Sets the minimum stake: for new registrations, and for a host to stay active
    /// (a host below it is chosen for no new session until it adds stake).
    /// @param minStake_ the minimum, in FAB
    function setMinStake(uint256 minStake_) external onlyOwner {
        minStake = minStake_;
        emit MinStakeSet(minStake_);
    }

    /// @notice Sets the unbonding delay for future unregistrations.
    /// @param delay the delay, in seconds
    function setUnbondingDelay(uint64 delay) external onlyOwner {
        unbondingDelay = delay;
        emit UnbondingDelaySet(delay);
    }

    /// @notice Allows or forbids `locker` (an escrow contract) to lock stakes for the work it
    /// hands to hosts.
    /// @param locker the escrow contract; nonzero
    /// @param allowed whether it may lock stakes
    function setStakeLocker(address locker, bool allowed) external onlyOwner {
        if (locker == address(0)) revert ZeroAddress();
        stakeLockers[locker] = allowed;
        emit StakeLockerSet(locker, allowed);
    }

    // ----------------------------------------------------------------- views

    /// @notice The full record of `host` (empty when unknown).
    /// @param host the host
    /// @return the host's record
    function getNode(address host) external view returns (Node memory) {
        return _nodes[host];
    }

    /// @notice The active host registered with libp2p `peerId`, or address(0).
    /// @param peerId the libp2p peer id (multihash bytes)
    /// @return the host, or address(0)
    function hostOfPeerId(bytes calldata peerId) external view returns (address) {
        return _hostOfPeerId[keccak256(peerId)];
    }

    /// @inheritdoc INodeRegistry
    function isActiveHost(address host) public view returns (bool) {
        Node storage node = _nodes[host];
        return _isRegistered(node) && node.stake >= minStake;
    }

    /// @inheritdoc INodeRegistry
    function servesModel(address host, bytes32 modelId) public view returns (bool) {
        return _hostIndex[modelId][host] != 0;
    }

    /// @inheritdoc INodeRegistry
    function getPrice(address host, bytes32 modelId, address token) external view returns (uint256) {
        if (!servesModel(host, modelId)) return 0;
        return _prices[host][modelId][_priceEpoch[host][modelId]][token];
    }

    /// @notice How many active hosts serve `modelId`.
    /// @param modelId the model
    /// @return the number of hosts
    function hostCountForModel(bytes32 modelId) external view returns (uint256) {
        return _hostsByModel[modelId].length;
    }

    /// @notice A page of the hosts serving `modelId` (order changes as hosts leave).
    /// @param modelId the model
    /// @param offset the index of the first host returned
    /// @param limit the most hosts returned
    /// @return page the hosts from `offset` on, at most `limit` of them
    function hostsForModel(bytes32 modelId, uint256 offset, uint256 limit)
        external
        view
        returns (address[] memory page)
    {
        address[] storage hosts = _hostsByModel[modelId];
        if (offset >= hosts.length) return new address[](0);
        uint256 end = offset + limit > hosts.length ? hosts.length : offset + limit;
        page = new address[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            page[i - offset] = hosts[i];
        }
    }

    // ----------------------------------------------------------------- internals

    function _isRegistered(Node storage node) private view returns (bool) {
        return node.registeredAt != 0 && node.unbondingEnds == 0;
    }

    function _setEndpoint(Node storage node, bytes calldata peerId, string[] calldata addrs) private {
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID_LENGTH) revert InvalidPeerId();
        if (addrs.length > MAX_ADDRS) revert TooManyAddrs(addrs.length);
        bytes32 key = keccak256(peerId);
        address owner_ = _hostOfPeerId[key];
        if (owner_ != address(0) && owner_ != msg.sender) revert PeerIdTaken(owner_);
        if (node.peerId.length != 0) delete _hostOfPeerId[keccak256(node.peerId)];
        _hostOfPeerId[key] = msg.sender;
        node.peerId = peerId;
        delete node.addrs;
        for (uint256 i = 0; i < addrs.length; ++i) {
            node.addrs.push(addrs[i]);
        }
        emit EndpointUpdated(msg.sender, peerId, addrs);
    }

    function _setMetadata(Node storage node, string calldata metadata) private {
        if (bytes(metadata).length > MAX_METADATA_LENGTH) revert MetadataTooLong(bytes(metadata).length);
        node.metadata = metadata;
        emit MetadataUpdated(msg.sender, metadata);
    }

    function _setModels(Node storage node, bytes32[] calldata models) private {
        if (models.length == 0) revert NoModels();
        if (models.length > MAX_MODELS) revert TooManyModels(models.length);
        for (uint256 i = 0; i < models.length; ++i) {
            bytes32 modelId = models[i];
            // Bounded by MAX_MODELS; a view call to our own immutable ModelRegistry.
            // slither-disable-next-line calls-loop
            if (!modelRegistry.isActive(modelId)) revert ModelNotActive(modelId);
            if (_hostIndex[modelId][msg.sender] != 0) revert DuplicateModel(modelId);
            _hostsByModel[modelId].push(msg.sender);
            _hostIndex[modelId][msg.sender] = _hostsByModel[modelId].length;
        }
        node.models = models;
        emit ModelsUpdated(msg.sender, models);
    }

    /// @dev Bounded by MAX_MODELS: removes the caller from each served model's host list.
    function _clearModels(Node storage node) private {
        bytes32[] storage models = node.models;
        for (uint256 i = 0; i < models.length; ++i) {
            bytes32 modelId = models[i];
            address[] storage hosts = _hostsByModel[modelId];
            uint256 index = _hostIndex[modelId][msg.sender] - 1;
            address last = hosts[hosts.length - 1];
            hosts[index] = last;
            _hostIndex[modelId][last] = index + 1;
            hosts.pop();
            delete _hostIndex[modelId][msg.sender];
        }
        delete node.models;
    }

    function _setPrices(PriceInput[] calldata prices) private {
        for (uint256 i = 0; i < prices.length; ++i) {
            PriceInput calldata p = prices[i];
            if (!servesModel(msg.sender, p.modelId)) revert ModelNotServed(p.modelId);
            _prices[msg.sender][p.modelId][_priceEpoch[msg.sender][p.modelId]][p.token] = p.price;
            emit PriceSet(msg.sender, p.modelId, p.token, p.price);
        }
    }

    /// @dev Makes every price the caller set for `modelId` lapse, in O(1).
    function _clearPrices(bytes32 modelId) private {
        ++_priceEpoch[msg.sender][modelId];
        emit PricesCleared(msg.sender, modelId);
    }
}
